"""The public gRPC contract, fabriek.v1: fresh stubs, protobuf style, and no breaking change."""

from __future__ import annotations

import pickle
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

import serving.protos
from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.generate import stale_stubs

# Every field of fabriek.v1 as published: (message, field) -> number. A field may be added;
# one listed here may never change its number or disappear without being `reserved`.
PUBLISHED_FIELDS = {
    ("ChatMessage", "role"): 1, ("ChatMessage", "content"): 2,
    ("SamplingParams", "max_tokens"): 1, ("SamplingParams", "temperature"): 2, ("SamplingParams", "top_p"): 3,
    ("SamplingParams", "stop"): 4, ("SamplingParams", "seed"): 5,
    ("Usage", "prompt_tokens"): 1, ("Usage", "completion_tokens"): 2, ("Usage", "total_tokens"): 3,
    ("ChatRequest", "model"): 1, ("ChatRequest", "messages"): 2, ("ChatRequest", "sampling"): 3,
    ("ChatResponse", "id"): 1, ("ChatResponse", "model"): 2, ("ChatResponse", "content"): 3,
    ("ChatResponse", "finish_reason"): 4, ("ChatResponse", "usage"): 5,
    ("ChatStreamResponse", "id"): 1, ("ChatStreamResponse", "model"): 2,
    ("ChatStreamResponse", "content_delta"): 3, ("ChatStreamResponse", "finish_reason"): 4,
    ("ChatStreamResponse", "usage"): 5,
    ("CompletionRequest", "model"): 1, ("CompletionRequest", "prompt"): 2, ("CompletionRequest", "sampling"): 3,
    ("CompletionResponse", "id"): 1, ("CompletionResponse", "model"): 2, ("CompletionResponse", "text"): 3,
    ("CompletionResponse", "finish_reason"): 4, ("CompletionResponse", "usage"): 5,
    ("CompletionStreamResponse", "id"): 1, ("CompletionStreamResponse", "model"): 2,
    ("CompletionStreamResponse", "text_delta"): 3, ("CompletionStreamResponse", "finish_reason"): 4,
    ("CompletionStreamResponse", "usage"): 5,
    ("Model", "id"): 1, ("Model", "max_model_len"): 2,
    ("ListModelsResponse", "models"): 1,
    ("CountTokensRequest", "model"): 1, ("CountTokensRequest", "text"): 2,
    ("CountTokensResponse", "token_count"): 1,
}
PUBLISHED_RPCS = {"Chat", "ChatStream", "Complete", "CompleteStream", "ListModels", "CountTokens"}


def test_committed_stubs_match_the_proto():
    assert not stale_stubs(), "stale gRPC stubs: run `python -m serving.protos.generate` and commit them"


def test_no_published_field_changed_or_vanished():
    for (message, field), number in PUBLISHED_FIELDS.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        if field in descriptor.fields_by_name:
            assert descriptor.fields_by_name[field].number == number, f"{message}.{field} changed its number"
        else:
            assert field in _reserved_names(message), f"{message}.{field} removed without `reserved`"
    assert PUBLISHED_RPCS <= set(pb.DESCRIPTOR.services_by_name["InferenceService"].methods_by_name)


def _reserved_names(message: str) -> set[str]:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    [message_proto] = [m for m in proto.message_type if m.name == message]
    return set(message_proto.reserved_name)


def test_protobuf_style_and_evolution_rules():
    assert pb.DESCRIPTOR.package == "fabriek.v1"
    assert 'syntax = "proto3";' in (Path(serving.protos.__file__).parent / "fabriek/v1/inference.proto").read_text()
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED") and all(v.name.startswith(zero.removesuffix("UNSPECIFIED"))
                                                     for v in enum.values), enum.name
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            assert not field.is_required, f"{message.name}.{field.name} is required"
            assert field.name == field.name.lower(), f"{message.name}.{field.name} is not snake_case"
            assert field.type != FieldDescriptor.TYPE_GROUP


def test_messages_pickle_by_their_package_path():
    # Ray's gRPC proxy pickles each request to the ingress replica: the class must import there.
    request = pb.ChatRequest(model="m", messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hoi")])
    assert type(request).__module__ == "serving.protos.fabriek.v1.inference_pb2"
    assert pickle.loads(pickle.dumps(request)) == request
