"""Usage inside an OpenAI event stream, read without parsing every event.

Every streamed request asks the engine for continuous usage (``stream_options``
``continuous_usage_stats``): each event then carries the tokens produced so far. A stream
that ends early (the client left, its time ran out, the engine failed) is charged from the
last event relayed, one parse at the end, nothing per token. Events keep vLLM's exact
bytes; when the client did not ask for continuous usage, its ``"usage"`` member is cut out
of each event by position (``without_usage``), still without a parse.
"""

from __future__ import annotations

import json
from typing import Any

# The final usage event of a stream is the one chunk without choices.
USAGE_ONLY = '"choices":[]'
_USAGE_MEMBER = ',"usage":{'
_USAGE_KEY = '"usage":{'
_DATA = "data: {"
_ERROR = 'data: {"error"'


def last_usage_event(batch: list[str]) -> str | None:
    """The last event of a batch that carries usage (not an error event, not ``[DONE]``), or None."""
    for event in reversed(batch):
        if _USAGE_KEY in event and event.startswith(_DATA):
            return event
    return None


def usage_of(event: str | None) -> tuple[int, int] | None:
    """(prompt, completion) tokens carried by one ``data: {...}`` event, if it has usage."""
    if event is None:
        return None
    try:
        usage = json.loads(event[len("data: "):]).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def answer_tokens(answer: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a whole answer: its ``usage``, as chat and embeddings
    name them (``prompt_tokens``) or as the Responses API does (``input_tokens``)."""
    usage = getattr(answer, "usage", None)
    if usage is None:
        return 0, 0
    prompt = getattr(usage, "prompt_tokens", None)
    if prompt is None:
        prompt = getattr(usage, "input_tokens", 0)
    completion = getattr(usage, "completion_tokens", None)
    if completion is None:
        completion = getattr(usage, "output_tokens", 0)
    return int(prompt or 0), int(completion or 0)


def without_usage(event: str) -> str:
    """The event with its ``"usage":{...}`` member cut out (flat integers, so the member ends
    at the first ``}``); unchanged when it has none."""
    start = event.find(_USAGE_MEMBER)
    if start < 0:
        return event
    end = event.find("}", start + len(_USAGE_MEMBER))
    nested = event.find("{", start + len(_USAGE_MEMBER))
    if end < 0 or 0 <= nested < end:  # not the flat shape: parse this one event instead
        data = json.loads(event[len("data: "):])
        data.pop("usage", None)
        return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
    return event[:start] + event[end + 1:]


def error_status_in(batch: list[str]) -> int | None:
    """The status of an error event in the batch (the engine failed mid-stream), if any."""
    for event in batch:
        if event.startswith(_ERROR):
            try:
                error = json.loads(event[len("data: "):])["error"]
                return int(error.get("code") or 500)
            except (ValueError, KeyError, TypeError, AttributeError):
                return 500
    return None
