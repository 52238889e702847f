"""A property-based fuzz of ``fabriek.v1.InferenceService`` over a real channel.

Each example is one call of one RPC, with a request that is one of:
  * a random message of the RPC's request type, built from its descriptor (every field,
    any value its type allows: unknown enum values, NaN and infinite floats, int64 extremes);
  * such a message with random bytes appended (unknown or broken fields);
  * random bytes, sent as the raw request;
and metadata that is mostly right (the domain in ``application``, the tenant's key) and
otherwise wrong (no key, a malformed or unknown one, another or no domain), plus random
extra pairs. Property: no call ends with INTERNAL, UNKNOWN or DATA_LOSS (UNAVAILABLE is
allowed: a loading or full pool). The message strategies follow the proto, so a field added
to ``serving/protos/fabriek/v1/inference.proto`` is fuzzed without a change here.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory, struct_pb2, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.protos.fabriek.v1 import inference_pb2 as pb  # noqa: E402

SERVICE = "fabriek.v1.InferenceService"
# RPC -> (request type, is the answer streamed)
RPCS: dict[str, tuple[type[Message], bool]] = {
    "Chat": (pb.ChatRequest, False), "ChatStream": (pb.ChatRequest, True),
    "Complete": (pb.CompletionRequest, False), "CompleteStream": (pb.CompletionRequest, True),
    "ListModels": (pb.ListModelsRequest, False), "CountTokens": (pb.CountTokensRequest, False),
    "Embed": (pb.EmbedRequest, False)}
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
_KEY_SHOWN = "$FABRIEK_KEY"
_TIMEOUT_S = 120
# Protobuf strings are UTF-8: no surrogates (the client refuses to serialize them).
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=48)
# JSON values for a google.protobuf.Struct (tool parameters, a response format's schema).
_JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                     max_leaves=8)


def _struct(value: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct
# Metadata keys gRPC accepts from a client: lower case, not reserved (grpc-*), no pseudo-headers.
_META_KEY = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,15}\Z").filter(
    lambda k: not k.startswith("grpc-") and k not in {"te", "content-type", "user-agent", "host"})
_META_VALUE = st.from_regex(r"\A[\x21-\x7e]([\x20-\x7e]{0,30}[\x21-\x7e])?\Z")


def message_strategy(descriptor: Descriptor, model: str | None, depth: int = 0) -> st.SearchStrategy[dict]:
    """Keyword arguments of a random message of ``descriptor``'s type: any subset of its fields."""
    return st.fixed_dictionaries({}, optional={f.name: _field_strategy(f, model, depth) for f in descriptor.fields})


def _field_strategy(field: FieldDescriptor, model: str | None, depth: int) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Struct":
        one = st.dictionaries(_TEXT, _JSON, max_size=4).map(_struct)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        message_class = message_factory.GetMessageClass(field.message_type)
        one = (message_strategy(field.message_type, model, depth + 1).map(lambda kw: message_class(**kw))
               if depth < 3 else st.just(message_class()))
    elif field.type == FieldDescriptor.TYPE_STRING:
        # Mostly the tenant's model or none (its only one), so that most calls reach an engine.
        one = _mostly(st.just(model), st.one_of(st.just(""), _TEXT)) if field.name == "model" and model else _TEXT
    elif field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        one = st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))  # open enums
    elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        one = st.one_of(st.integers(0, 32), st.integers(0, 2**32 - 1))
    elif field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        one = st.one_of(st.integers(-4, 2**16), st.integers(-(2**63), 2**63 - 1))
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        one = st.integers(-(2**31), 2**31 - 1)
    elif field.type == FieldDescriptor.TYPE_UINT64:
        one = st.integers(0, 2**64 - 1)
    elif field.type == FieldDescriptor.TYPE_FLOAT:
        one = st.one_of(st.floats(0, 2, width=32), st.floats(width=32))
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        one = st.floats()
    elif field.type == FieldDescriptor.TYPE_BOOL:
        one = st.booleans()
    elif field.type == FieldDescriptor.TYPE_BYTES:
        one = st.binary(max_size=32)
    else:
        raise NotImplementedError(f"no strategy for {field.full_name} (type {field.type})")
    return st.lists(one, max_size=4) if field.is_repeated else one


# How a request is made: a whole message, a message with bytes appended, random bytes.
PAYLOADS = ("message", "appended", "bytes")


def request_strategy(rpc: str, model: str | None,
                     payloads: tuple[str, ...] = PAYLOADS) -> st.SearchStrategy[tuple[str, bytes]]:
    """(how it was made, the serialized request) of one call of ``rpc``; whole messages four
    times in five when ``payloads`` has them."""
    request_type = RPCS[rpc][0]
    message = message_strategy(request_type.DESCRIPTOR, model).map(lambda kw: request_type(**kw))
    made = {
        "message": message.map(lambda m: (text_format.MessageToString(m, as_one_line=True), m.SerializeToString())),
        "appended": st.tuples(message, st.binary(min_size=1, max_size=24)).map(
            lambda mb: (f"{text_format.MessageToString(mb[0], as_one_line=True)} + bytes {mb[1].hex()}",
                        mb[0].SerializeToString() + mb[1])),
        "bytes": st.binary(max_size=256).map(lambda b: (f"bytes {b.hex()}", b))}
    broken = [made[p] for p in payloads if p != "message"]
    if "message" not in payloads:
        return st.one_of(broken)
    return _mostly(made["message"], st.one_of(broken)) if broken else made["message"]


def _mostly(right: st.SearchStrategy, wrong: st.SearchStrategy) -> st.SearchStrategy:
    """``right`` four times in five, else ``wrong`` (``one_of`` would not weigh its branches)."""
    return st.integers(0, 4).flatmap(lambda i: wrong if i == 4 else right)


def metadata_strategy(domain: str, key: str, other_domains: tuple[str, ...]) -> st.SearchStrategy[list]:
    """Call metadata, mostly the tenant's (key and domain), else wrong in some way."""
    # Each mostly right: most calls then pass both and reach the request's parsing.
    wrong_key = st.one_of(st.none(), st.just(key), st.just(f"bearer {key}"), st.just(f"Bearer {key}x"),
                          _META_VALUE, _META_VALUE.map(lambda v: f"Bearer {v}"))
    authorization = _mostly(st.just(f"Bearer {key}"), wrong_key)
    wrong_domain = st.one_of(st.none(), st.just(domain.upper()), _META_VALUE, *(st.just(d) for d in other_domains))
    application = _mostly(st.just(domain), wrong_domain)
    extra = st.lists(st.one_of(st.tuples(_META_KEY, _META_VALUE),
                               st.tuples(_META_KEY.map(lambda k: f"{k}-bin"), st.binary(max_size=16))),
                     max_size=3)

    def assemble(parts) -> list[tuple[str, Any]]:
        auth, app, more = parts
        metadata = [("authorization", auth)] if auth is not None else []
        return metadata + ([("application", app)] if app is not None else []) + more

    return st.tuples(authorization, application, extra).map(assemble)


def call(channel: grpc.Channel, rpc: str, request: bytes, metadata: list) -> tuple[grpc.StatusCode, str]:
    """One call with the raw ``request`` bytes; its status and details (streams read to the end)."""
    path = f"/{SERVICE}/{rpc}"
    try:
        if RPCS[rpc][1]:
            for _ in channel.unary_stream(path)(request, metadata=metadata, timeout=_TIMEOUT_S):
                pass
        else:
            channel.unary_unary(path)(request, metadata=metadata, timeout=_TIMEOUT_S)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def run_grpc_fuzz(target: str, domain: str, key: str, *, examples: int, model: str | None = None,
                  other_domains: tuple[str, ...] = (), payloads: tuple[str, ...] = PAYLOADS,
                  derandomize: bool = False) -> dict[str, Any]:
    """``examples`` random calls spread over every RPC of the server at ``target``.

    Args:
        target: ``HOST:PORT`` of the gRPC proxy.
        domain: the tenant's isolation domain (the ``application`` metadata).
        key: a key of a tenant of that domain (its quota should cap ``max_tokens``).
        model: a model id the tenant may use, mixed into the generated ``model`` fields.
        other_domains: further domain names to send in ``application`` now and then.
        payloads: which kinds of request to send (``PAYLOADS``).
        derandomize: the same examples on every run (for CI).

    Returns:
        ``{"requests", "codes": {rpc: {code: count}}, "failures": [...]}``; a failure is a call
        that ended INTERNAL, UNKNOWN or DATA_LOSS.
    """
    codes: dict[str, Counter] = {rpc: Counter() for rpc in RPCS}
    failures: list[dict] = []
    calls = st.sampled_from(sorted(RPCS)).flatmap(
        lambda rpc: st.tuples(st.just(rpc), request_strategy(rpc, model, payloads)))

    with grpc.insecure_channel(target) as channel:
        @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=derandomize)
        @given(one=calls, metadata=metadata_strategy(domain, key, other_domains))
        def fuzz(one, metadata):
            rpc, (made, request) = one
            code, details = call(channel, rpc, request, metadata)
            codes[rpc][code.name] += 1
            if code in FORBIDDEN:
                failures.append({"rpc": rpc, "code": code.name, "details": details[:500], "request": made[:2000],
                                 "request_hex": request.hex(),
                                 "metadata": [(k, v.hex() if isinstance(v, bytes) else v.replace(key, _KEY_SHOWN))
                                              for k, v in metadata]})

        fuzz()
    return {"requests": sum(sum(c.values()) for c in codes.values()),
            "codes": {rpc: dict(sorted(c.items())) for rpc, c in codes.items()}, "failures": failures}
