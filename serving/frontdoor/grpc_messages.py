"""From ``fabriek.v1`` messages to vLLM's OpenAI protocol models and back.

Requests are built as the OpenAI JSON body would be and validated by vLLM's own models,
so a gRPC request is checked exactly as an HTTP one. Streamed engine answers arrive as
server-sent events (the engine speaks OpenAI); ``StreamDecoder`` turns each batch of events
into one streamed message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from ray.llm._internal.serve.core.configs.openai_api_models import EmbeddingCompletionRequest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

# Ray's workaround for a pydantic bug that leaves unpicklable iterators in chat
# messages; it must run before a request crosses to another actor (as in serving.frontdoor.ingress).
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

from serving.frontdoor.errors import APIError
from serving.frontdoor.openai_requests import validate_openai_request
from serving.protos.fabriek.v1 import inference_pb2 as pb

ROLE_NAMES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant",
              pb.ROLE_TOOL: "tool"}
FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH,
                  "tool_calls": pb.FINISH_REASON_TOOL_CALLS}
TOOL_CHOICE_MODES = {pb.TOOL_CHOICE_MODE_AUTO: "auto", pb.TOOL_CHOICE_MODE_NONE: "none",
                     pb.TOOL_CHOICE_MODE_REQUIRED: "required"}
# Ask the engine for the usage chunk at the end of every stream.
_STREAM_OPTIONS = {"include_usage": True}


def decode(request: bytes | Message, message_type: type[Message]) -> Message:
    """``request`` as ``message_type`` (a decoded message passes as it is).

    Raises:
        APIError: 400 for bytes that are not a valid ``message_type``.
    """
    if isinstance(request, message_type):
        return request
    try:
        return message_type.FromString(request)
    except (DecodeError, TypeError, ValueError):
        raise APIError(400, f"the request is not a valid {message_type.DESCRIPTOR.full_name}") from None


def refuse_unknown_fields(message: Message) -> None:
    """A field this version of ``fabriek.v1`` does not define is refused, as HTTP refuses an
    unrecognized argument (protobuf would otherwise drop it silently).

    Raises:
        APIError: 400 naming the field number.
    """
    unknown = UnknownFieldSet(message)
    if len(unknown):
        raise APIError(400, f"Unrecognized field number {unknown[0].field_number} in "
                       f"{message.DESCRIPTOR.name}", param=f"#{unknown[0].field_number}")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:  # a map (a Struct's fields): its values
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            value = value.values()
        for item in (value if field.is_repeated else [value]):
            refuse_unknown_fields(item)


def chat_request(message: pb.ChatRequest, *, stream: bool,
                 max_sequences: int) -> tuple[ChatCompletionRequest, Any]:
    """vLLM's chat request for ``message``, and its shape (``routers.request_shape``).

    Raises:
        APIError: 400 for a message role left unspecified or a field vLLM refuses.
    """
    refuse_unknown_fields(message)
    messages = [_chat_message(i, m) for i, m in enumerate(message.messages)]
    if not messages:
        raise APIError(400, "messages: at least one message is required", param="messages")
    body, shape = validate_openai_request(_body(message, stream, messages=messages, **_tool_fields(message)),
                                          ChatCompletionRequest, "chat", max_sequences)
    try:
        return _sanitize_chat_completion_request(body), shape
    except ValueError:
        raise APIError(400, "invalid request: malformed message content", param="messages") from None


def _chat_message(i: int, m: pb.ChatMessage) -> dict[str, Any]:
    """One ``ChatMessage`` as the OpenAI JSON message."""
    if m.role not in ROLE_NAMES:
        raise APIError(400, f"messages[{i}].role must be set (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or "
                       "ROLE_TOOL)", param=f"messages[{i}].role")
    out: dict[str, Any] = {"role": ROLE_NAMES[m.role], "content": m.content}
    if m.tool_calls:
        if m.role != pb.ROLE_ASSISTANT:
            raise APIError(400, f"messages[{i}].tool_calls: only an assistant message carries tool calls",
                           param=f"messages[{i}].tool_calls")
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
    if m.role == pb.ROLE_TOOL:
        if not m.tool_call_id:
            raise APIError(400, f"messages[{i}].tool_call_id: a ROLE_TOOL message names the call it answers",
                           param=f"messages[{i}].tool_call_id")
        out["tool_call_id"] = m.tool_call_id
    return out


def _tool_fields(message: pb.ChatRequest) -> dict[str, Any]:
    """The OpenAI fields of the request's tools, tool choice and response format (absent: unset)."""
    fields: dict[str, Any] = {}
    if message.tools:
        fields["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            "parameters": _json_of(t.parameters) if t.HasField("parameters") else
            {"type": "object", "properties": {}}, **({"strict": True} if t.strict else {})}} for t in message.tools]
    choice = message.tool_choice
    which = choice.WhichOneof("choice") if message.HasField("tool_choice") else None
    if which == "function_name":
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.function_name}}
    elif which == "mode" and choice.mode in TOOL_CHOICE_MODES:
        fields["tool_choice"] = TOOL_CHOICE_MODES[choice.mode]
    if message.HasField("parallel_tool_calls"):
        fields["parallel_tool_calls"] = message.parallel_tool_calls
    form = message.response_format.WhichOneof("format") if message.HasField("response_format") else None
    if form == "json_object" and message.response_format.json_object:
        fields["response_format"] = {"type": "json_object"}
    elif form == "json_schema":
        schema = message.response_format.json_schema
        fields["response_format"] = {"type": "json_schema", "json_schema": {
            "name": schema.name or "answer", "schema": _json_of(schema.schema),
            **({"strict": True} if schema.strict else {})}}
    return fields


def _json_of(struct: Any) -> Any:
    """A ``Struct`` as JSON: protobuf keeps every number as a double, so whole numbers come
    back as ints (a schema's ``maxLength: 10``, not ``10.0``, which grammar compilers refuse)."""
    def whole(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, dict):
            return {k: whole(v) for k, v in value.items()}
        if isinstance(value, list):
            return [whole(v) for v in value]
        return value
    return whole(json_format.MessageToDict(struct))


def completion_request(message: pb.CompletionRequest, *, stream: bool,
                       max_sequences: int) -> tuple[CompletionRequest, Any]:
    """vLLM's completion request for ``message``, and its shape (``routers.request_shape``).

    Raises:
        APIError: 400 for a field vLLM refuses.
    """
    refuse_unknown_fields(message)
    return validate_openai_request(_body(message, stream, prompt=message.prompt), CompletionRequest,
                                   "completions", max_sequences)


def embed_request(message: pb.EmbedRequest, *, stream: bool = False,
                  max_sequences: int) -> tuple[EmbeddingCompletionRequest, Any]:
    """vLLM's embedding request for ``message``, and its shape (``routers.request_shape``).

    Raises:
        APIError: 400 for no inputs (``routers.request_shape``) or a field vLLM refuses.
    """
    refuse_unknown_fields(message)
    body: dict[str, Any] = {"model": message.model or None, "input": list(message.inputs)}
    if message.HasField("dimensions"):
        body["dimensions"] = message.dimensions
    return validate_openai_request(body, EmbeddingCompletionRequest, "embeddings", max_sequences)


def embed_response(response: Any) -> pb.EmbedResponse:
    """``pb.EmbedResponse`` from vLLM's ``EmbeddingResponse`` (float vectors)."""
    vectors = sorted(response.data, key=lambda d: d.index)
    return pb.EmbedResponse(id=response.id, model=response.model,
                            embeddings=[pb.Embedding(values=v.embedding) for v in vectors],
                            usage=usage(response.usage))


# The OpenAI name of max_tokens per request kind (chat deprecates `max_tokens`).
_MAX_TOKENS_FIELD = {True: "max_completion_tokens", False: "max_tokens"}


def _body(message: pb.ChatRequest | pb.CompletionRequest, stream: bool, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": message.model or None, "stream": stream, **fields}
    if stream:
        body["stream_options"] = _STREAM_OPTIONS
    sampling = message.sampling
    if sampling.HasField("max_tokens"):
        body[_MAX_TOKENS_FIELD["messages" in fields]] = sampling.max_tokens
    for name in ("temperature", "top_p", "seed"):
        if sampling.HasField(name):
            body[name] = getattr(sampling, name)
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    return body


def usage(info: Any) -> pb.Usage:
    """``pb.Usage`` from vLLM's usage (a model or its JSON dict)."""
    if not isinstance(info, dict):
        info = info.model_dump()
    return pb.Usage(prompt_tokens=info.get("prompt_tokens") or 0,
                    completion_tokens=info.get("completion_tokens") or 0,
                    total_tokens=info.get("total_tokens") or 0)


def chat_response(response: Any) -> pb.ChatResponse:
    """``pb.ChatResponse`` from vLLM's ``ChatCompletionResponse``."""
    choice = response.choices[0]
    calls = [pb.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
             for c in choice.message.tool_calls or ()]
    return pb.ChatResponse(id=response.id, model=response.model, content=choice.message.content or "",
                           finish_reason=FINISH_REASONS.get(choice.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
                           usage=usage(response.usage), tool_calls=calls)


def completion_response(response: Any) -> pb.CompletionResponse:
    """``pb.CompletionResponse`` from vLLM's ``CompletionResponse``."""
    choice = response.choices[0]
    return pb.CompletionResponse(
        id=response.id, model=response.model, text=choice.text,
        finish_reason=FINISH_REASONS.get(choice.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
        usage=usage(response.usage))


def _tool_call_delta(call: dict[str, Any]) -> pb.ToolCallDelta:
    function = call.get("function") or {}
    return pb.ToolCallDelta(index=call.get("index") or 0, id=call.get("id") or "", name=function.get("name") or "",
                            arguments_delta=function.get("arguments") or "")


class EngineStreamError(Exception):
    """The engine reported an error in the middle of a stream."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class StreamDecoder:
    """Turns batches of the engine's OpenAI stream events into ``fabriek.v1`` stream messages.

    The finish reason is held back until the usage event, which the engine sends last, so
    that both arrive on the last message, as the proto promises.

    Args:
        is_chat: chat events (``delta.content``) or completion events (``text``).
    """

    is_chat: bool
    _id: str = ""
    _model: str = ""
    _finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    is_finished: bool = False
    tokens: tuple[int, int] = (0, 0)  # (prompt, completion) from the usage event, for the ledger

    def decode(self, batch: list[str]) -> pb.ChatStreamResponse | pb.CompletionStreamResponse | None:
        """The stream message of one engine batch, or None when it holds no text and no end.

        Raises:
            EngineStreamError: an error event.
        """
        pieces: list[str] = []
        calls: list[pb.ToolCallDelta] = []
        usage_info = None
        for event in batch:
            # "\n" only: str.splitlines also splits at U+2028, U+0085 and others, which JSON
            # leaves unescaped inside the generated text.
            for line in event.split("\n"):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk or chunk.get("object") == "error":
                    error = chunk.get("error", chunk)
                    raise EngineStreamError(int(error.get("code") or 500), str(error.get("message")))
                self._id, self._model = chunk.get("id", self._id), chunk.get("model", self._model)
                for choice in chunk.get("choices") or ():
                    text = choice["delta"].get("content") if self.is_chat else choice.get("text")
                    if text:
                        pieces.append(text)
                    if self.is_chat and choice["delta"].get("tool_calls"):
                        calls.extend(_tool_call_delta(c) for c in choice["delta"]["tool_calls"])
                    if choice.get("finish_reason"):
                        self._finish_reason = FINISH_REASONS.get(choice["finish_reason"],
                                                                 pb.FINISH_REASON_UNSPECIFIED)
                if chunk.get("usage"):  # on every event (continuous usage): the tokens so far
                    running = chunk["usage"]
                    self.tokens = (running.get("prompt_tokens", 0), running.get("completion_tokens", 0))
                    if not chunk.get("choices"):  # the final usage event
                        usage_info = running
        if not pieces and not calls and usage_info is None:
            return None
        message = self._message("".join(pieces))
        if calls:
            message.tool_call_deltas.extend(calls)
        if usage_info is not None:
            message.usage.CopyFrom(usage(usage_info))
            message.finish_reason = self._finish_reason
            self.is_finished = True
        return message

    def last(self) -> pb.ChatStreamResponse | pb.CompletionStreamResponse:
        """The closing message of a stream that ended without a usage event."""
        message = self._message("")
        message.finish_reason = self._finish_reason
        self.is_finished = True
        return message

    def _message(self, text: str) -> pb.ChatStreamResponse | pb.CompletionStreamResponse:
        if self.is_chat:
            return pb.ChatStreamResponse(id=self._id, model=self._model, content_delta=text)
        return pb.CompletionStreamResponse(id=self._id, model=self._model, text_delta=text)
