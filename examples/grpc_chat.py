"""A fabriek gRPC client to copy: stream a chat answer, with deadlines, retries and every error status.

Generate the client from the contract (the only reference) once, next to this file:

    pip install grpcio grpcio-tools googleapis-common-protos
    python -m grpc_tools.protoc -I serving/protos --python_out=. --grpc_python_out=. \\
        serving/protos/fabriek/v1/inference.proto

then run it with a key of your tenant (`fabriek keys create --tenant ...` prints one):

    FABRIEK_API_KEY=fk_... python grpc_chat.py --target 127.0.0.1:9001 --domain commercial \\
        "What is the capital of the Netherlands?"

Each isolation domain has its own gRPC port (`fabriek config check` lists them: locally
9000 for `government`, 9001 for `commercial`), and every call names the domain of your
tenant in the `application` metadata; a key shown at another domain's door is refused as
unknown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc
from google.rpc import error_details_pb2, status_pb2

from fabriek.v1 import inference_pb2 as pb
from fabriek.v1.inference_pb2_grpc import InferenceServiceStub

# Worth retrying after the delay the server gives; every other status is final.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def retry_delay_s(error: grpc.RpcError, default_s: float = 1.0) -> float:
    """The server's retry delay: google.rpc.RetryInfo, else the `retry-after` metadata."""
    trailing = dict(error.trailing_metadata() or ())
    if "grpc-status-details-bin" in trailing:
        status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return float(trailing.get("retry-after", default_s))


def stream_chat(stub: InferenceServiceStub, api_key: str, domain: str, question: str, *, model: str = "",
                max_tokens: int = 128, temperature: float = 0.7, deadline_s: float = 60.0,
                attempts: int = 3) -> pb.Usage:
    """Print the answer as it streams in; return its token usage.

    Raises:
        grpc.RpcError: a final error (see the table in inference.proto).
    """
    request = pb.ChatRequest(model=model, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=question)],
                             sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=temperature))
    metadata = [("authorization", f"Bearer {api_key}"), ("application", domain)]
    for attempt in range(1, attempts + 1):
        try:
            # The deadline covers the whole stream; when it passes, the server stops generating.
            call = stub.ChatStream(request, metadata=metadata, timeout=deadline_s)
            usage = None
            for message in call:
                print(message.content_delta, end="", flush=True)
                if message.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                    usage = message.usage
            print()
            pool = dict(call.trailing_metadata()).get("x-fabriek-pool")
            print(f"[served by pool {pool}; finish {pb.FinishReason.Name(message.finish_reason)}]", file=sys.stderr)
            return usage
        except grpc.RpcError as error:
            if error.code() in RETRYABLE and attempt < attempts:
                delay = retry_delay_s(error)
                print(f"[{error.code().name}: {error.details()}; retrying in {delay:.0f} s]", file=sys.stderr)
                time.sleep(delay)
                continue
            raise
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--target", default="127.0.0.1:9000", help="host:port of fabriek's gRPC API")
    parser.add_argument("--domain", default="commercial",
                        help="your tenant's isolation domain (the gRPC `application`); default: commercial")
    parser.add_argument("--model", default="", help="model id (default: your tenant's only model)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for the same answer every time")
    parser.add_argument("--deadline-s", type=float, default=60.0)
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:  # use grpc.secure_channel behind TLS
        stub = InferenceServiceStub(channel)
        try:
            usage = stream_chat(stub, os.environ["FABRIEK_API_KEY"], args.domain, args.question, model=args.model,
                                max_tokens=args.max_tokens, temperature=args.temperature,
                                deadline_s=args.deadline_s)
        except grpc.RpcError as error:
            # UNAUTHENTICATED: fix the key (or --domain). NOT_FOUND: no such model for your
            # tenant, or no such domain.
            # INVALID_ARGUMENT: fix the request. DEADLINE_EXCEEDED: raise --deadline-s.
            print(f"error {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
