"""Usage read from an OpenAI event stream by position: exact bytes kept, one parse at the end."""

from __future__ import annotations

import json

from serving.admission.stream_usage import error_status_in, last_usage_event, usage_of, without_usage

CHUNK = ('data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         '"delta":{"content":"Hoi"},"finish_reason":null}],"usage":{"prompt_tokens":7,"total_tokens":9,'
         '"completion_tokens":2}}\n\n')


def test_usage_is_cut_out_leaving_the_rest_of_the_event_byte_for_byte():
    stripped = without_usage(CHUNK)
    assert '"usage"' not in stripped and stripped.endswith("}\n\n")
    expected = json.loads(CHUNK[6:])
    del expected["usage"]
    assert json.loads(stripped[6:]) == expected


def test_an_event_without_usage_is_unchanged_and_a_nested_one_is_parsed_instead():
    plain = 'data: {"id":"c","choices":[]}\n\n'
    assert without_usage(plain) is plain
    nested = 'data: {"id":"c","usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
    assert json.loads(without_usage(nested)[6:]) == {"id": "c"}


def test_the_last_usage_event_skips_errors_and_done():
    error = 'data: {"error":{"message":"x","code":500}}\n\n'
    batch = [CHUNK, error, "data: [DONE]\n\n"]
    assert last_usage_event(batch) is CHUNK and usage_of(last_usage_event(batch)) == (7, 2)
    assert error_status_in(batch) == 500
    assert last_usage_event([error]) is None and usage_of(None) is None
