"""fabriek.v1 messages to vLLM's protocol models and back, without Ray or an engine."""

from __future__ import annotations

import json

import pytest

from serving.frontdoor.errors import APIError
from serving.frontdoor.grpc_messages import EngineStreamError, StreamDecoder, chat_request, completion_request
from serving.protos.fabriek.v1 import inference_pb2 as pb

USER = pb.ChatMessage(role=pb.ROLE_USER, content="hoi")


def event(**chunk) -> str:
    return f"data: {json.dumps(chunk)}\n\n"


def test_chat_request_carries_the_openai_parameters():
    sampling = pb.SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, stop=["."], seed=3)
    body = chat_request(pb.ChatRequest(model="m", messages=[USER], sampling=sampling), stream=True, max_sequences=4)[0]
    assert (body.model, body.max_completion_tokens, body.temperature, body.top_p, body.stop, body.seed) == (
        "m", 7, 0.5, pytest.approx(0.9), ["."], 3)
    assert body.stream and body.stream_options.include_usage
    assert body.messages == [{"role": "user", "content": "hoi"}]


def test_unset_fields_stay_unset_and_an_empty_model_means_the_tenants_only_one():
    body = completion_request(pb.CompletionRequest(prompt="x"), stream=False, max_sequences=4)[0]
    assert body.model is None and body.max_tokens == 16  # OpenAI's default for completions
    assert body.temperature is None and body.seed is None and not body.stream
    assert chat_request(pb.ChatRequest(messages=[USER]), stream=False, max_sequences=4)[0].max_completion_tokens is None


@pytest.mark.parametrize("request_", [pb.ChatRequest(model="m"), pb.ChatRequest(messages=[pb.ChatMessage(content="x")])])
def test_invalid_chats_are_400(request_):
    with pytest.raises(APIError) as raised:
        chat_request(request_, stream=False, max_sequences=4)[0]
    assert raised.value.status == 400


def test_stream_decoder_joins_a_batch_and_ends_with_finish_reason_and_usage():
    decoder = StreamDecoder(is_chat=True)
    first = decoder.decode([event(id="c1", model="m", choices=[{"delta": {"role": "assistant", "content": ""}}]),
                            event(id="c1", model="m", choices=[{"delta": {"content": "Amster"}}])])
    assert (first.id, first.model, first.content_delta, first.finish_reason) == (
        "c1", "m", "Amster", pb.FINISH_REASON_UNSPECIFIED)
    # The finish reason arrives before the usage event: it waits for it, on the last message.
    middle = decoder.decode([event(id="c1", model="m", choices=[{"delta": {"content": "dam"}, "finish_reason": "stop"}])])
    assert middle.content_delta == "dam" and middle.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    last = decoder.decode([event(id="c1", model="m", choices=[],
                                 usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
                           "data: [DONE]\n\n"])
    assert last.finish_reason == pb.FINISH_REASON_STOP and last.usage.total_tokens == 5 and decoder.is_finished


def test_stream_decoder_reads_completion_text_and_reports_engine_errors():
    decoder = StreamDecoder(is_chat=False)
    assert decoder.decode([event(id="t", model="m", choices=[{"text": "één"}])]).text_delta == "één"
    assert decoder.decode([event(id="t", model="m", choices=[{"text": ""}])]) is None
    with pytest.raises(EngineStreamError) as raised:
        decoder.decode([event(error={"message": "boom", "code": 400})])
    assert raised.value.status == 400
    closing = decoder.last()
    assert closing.finish_reason == pb.FINISH_REASON_UNSPECIFIED and decoder.is_finished


def test_stream_decoder_keeps_the_running_usage_and_finishes_only_on_the_usage_event():
    decoder = StreamDecoder(is_chat=True)
    running = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    message = decoder.decode([event(choices=[{"index": 0, "delta": {"content": "Hoi"}}], usage=running)])
    assert message.content_delta == "Hoi" and not decoder.is_finished
    assert decoder.tokens == (3, 1)  # what a cancelled stream is charged


def test_unknown_protobuf_fields_are_refused():
    raw = pb.ChatRequest(model="m", messages=[USER]).SerializeToString() + bytes([0xF8, 0x06, 0x01])
    with pytest.raises(APIError) as raised:
        chat_request(pb.ChatRequest.FromString(raw), stream=False, max_sequences=4)
    assert raised.value.status == 400 and "field number 111" in raised.value.message


def test_bytes_that_are_not_the_message_are_a_400():
    from serving.frontdoor.grpc_messages import decode
    assert decode(pb.ListModelsRequest().SerializeToString(), pb.ListModelsRequest) == pb.ListModelsRequest()
    with pytest.raises(APIError) as raised:
        decode(b"\x00", pb.ListModelsRequest)
    assert raised.value.status == 400 and "fabriek.v1.ListModelsRequest" in raised.value.message


def test_generated_text_with_unicode_line_separators_decodes_whole():
    """Found by loadtests/fuzz_api.py: JSON leaves U+2028 and U+0085 unescaped in text."""
    decoder = StreamDecoder(is_chat=False)
    text = "a\u2028b\x85c\u2029d\x1ce"
    message = decoder.decode([f"data: {json.dumps({'id': 'x', 'choices': [{'index': 0, 'text': text}]}, ensure_ascii=False)}\n\n"])
    assert message.text_delta == text
