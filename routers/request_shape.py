"""What one request may ask of an engine: the fields the platform offers, and their bounds.

vLLM's request models accept any extra field, and many of vLLM's own fields are meant for
the operator, not a tenant (``kv_transfer_params`` steers disaggregated prefill,
``vllm_xargs`` reaches engine plugins, ``chat_template`` runs a template of the caller's
choosing, ``priority`` and ``cache_salt`` are the platform's isolation). So the front door
passes only the fields listed here, the OpenAI API's and the vLLM extensions the platform
chooses to offer (``docs/security.md`` has the table), and answers anything else as the
OpenAI API does: a 400 naming the field.

One request can also ask for many sequences at once (``n``, beam width, a list of prompts):
each is a sequence in the engine's batch, so the platform counts them in reservations,
fair shares and concurrency, and bounds them per class. Fields that make the engine compile
something (JSON schemas, regexes, grammars, tools) are bounded in size.
Pure: the front doors pass the request's JSON fields (a dict) and the class's bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

# Sampling and output fields that chat and completions share, OpenAI's and vLLM's.
_SHARED_OPENAI = frozenset({
    "model", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p", "seed", "stop",
    "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "user", "response_format"})
_SHARED_VLLM = frozenset({
    "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "stop_token_ids",
    "bad_words", "allowed_token_ids", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "use_beam_search", "structured_outputs", "truncate_prompt_tokens",
    "add_special_tokens", "echo"})

ALLOWED_FIELDS: Mapping[str, frozenset[str]] = {
    "chat": _SHARED_OPENAI | _SHARED_VLLM | frozenset({
        "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
        "reasoning_effort", "add_generation_prompt", "continue_final_message", "chat_template_kwargs",
        "include_reasoning"}),
    "completions": _SHARED_OPENAI | _SHARED_VLLM | frozenset({"prompt", "suffix"}),
    # OpenAI's Responses fields that need no stored state, and vLLM's sampling extensions.
    # `include` and `reasoning` are what the OpenAI Agents SDK sends on every call.
    "responses": frozenset({
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "tools",
        "tool_choice", "parallel_tool_calls", "text", "user", "metadata", "store", "truncation", "top_k",
        "min_p", "seed", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "structured_outputs", "include", "top_logprobs", "reasoning", "max_tool_calls"}),
    # OpenAI's embedding fields, and vLLM's truncation (a long document is cut, not refused).
    "embeddings": frozenset({"model", "input", "encoding_format", "dimensions", "user", "truncate_prompt_tokens"}),
}

# Why some fields vLLM accepts are not offered (for the 400's message and the docs' table).
REFUSED_FIELDS: Mapping[str, str] = {
    "cache_salt": "set by the platform: it keeps each tenant's prefix cache to itself",
    "priority": "set by the platform from the tenant's class",
    "request_id": "set by the platform (the usage ledger's id)",
    "kv_transfer_params": "steers the engine's KV-cache transfer; operators only",
    "ec_transfer_params": "steers the engine's encoder-cache transfer; operators only",
    "vllm_xargs": "reaches engine plugins; operators only",
    "chat_template": "would run a template of the caller's choosing in the engine",
    "prompt_embeds": "raw tensors into the engine",
    "prompt_logprobs": "a vocabulary-wide distribution per prompt token",
    "previous_response_id": "your tenant's class keeps no responses: send the conversation in `input`",
    "background": "the platform runs no request after its client has left",
    "previous_input_messages": "send the conversation in `input`",
    "prompt_cache_key": "the platform keeps each tenant's prefix cache to itself",
    "prompt_cache_retention": "the platform keeps each tenant's prefix cache to itself",
    "prompt_cache_options": "the platform keeps each tenant's prefix cache to itself",
    "safety_identifier": "the platform knows each caller by its key; send an end user's id as `user`",
    "service_tier": "set by the platform from the tenant's class",
    "background_options": "the platform runs no request after its client has left",
    "conversation": "the platform keeps no conversations: send the conversation in `input`",
    "prompt": "the platform keeps no prompt templates: send `instructions` and `input`",
    "context_management": "the platform compacts no context: send what the model should see",
    "moderation": "the platform runs no moderation model",
    "store": "the platform keeps no chat completions (the Responses API can, per class)",
    "metadata": "kept only with a stored answer, and the platform keeps no chat completions",
    "functions": "deprecated by OpenAI: use `tools`",
    "function_call": "deprecated by OpenAI: use `tool_choice`",
    "audio": "the platform's models answer in text",
    "modalities": "the platform's models answer in text",
    "image": "the platform's models read text only",
    "prediction": "predicted outputs are not offered by the engine",
    "verbosity": "not offered by the platform's models: ask for brevity in the prompt",
    "web_search_options": "the platform searches nothing outside the facility",
    "access_programs": "the tenant's class decides what it may use",
    "best_of": "removed from the engine (vLLM): use `n`",
}

# The forms of vLLM's ``structured_outputs`` the platform offers (docs/api.md): each is
# compiled into a grammar per request, within ``MAX_COMPILED_BYTES``.
STRUCTURED_OUTPUT_FORMS = frozenset({
    "json", "regex", "choice", "grammar", "json_object", "structural_tag",
    "disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"})
MAX_CHOICES = 256                # structured_outputs.choice

# A request's sequences per class, when the config names no bound (OpenAI's own n has no
# small limit; a facility pool's batch is what one request must not take alone).
DEFAULT_MAX_SEQUENCES = 4
# Texts per embeddings request, when the config names no bound: a document indexer sends
# batches (OpenAI takes up to 2048); each text is a sequence in the engine's batch.
DEFAULT_MAX_EMBEDDING_INPUTS = 64
# Size bounds of what the engine compiles or scans per step (serialized JSON, bytes).
MAX_COMPILED_BYTES = 16_384      # response_format, structured_outputs
MAX_TOOLS_BYTES = 65_536         # tools (each becomes grammar when tool choice is named)
MAX_TOOLS = 128                  # OpenAI's own limit
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_TOKEN_ID_LIST = 1_024        # stop_token_ids, allowed_token_ids, bad_words
MAX_LOGIT_BIAS = 300             # OpenAI's own limit
MAX_TOP_LOGPROBS = 20            # OpenAI's own limit
MAX_MODEL_ID_CHARS = 256         # a model id reaches the ledger, metrics and spans
MAX_INT = 2**31 - 1              # integer fields pass to C++ and CUDA as 32-bit


@dataclass(frozen=True)
class ShapeError:
    """A request the platform does not serve as sent: the field, and why (safe to show)."""

    param: str
    message: str


@dataclass(frozen=True)
class RequestShape:
    """What an accepted request asks of the engine.

    Args:
        sequences: sequences it adds to the engine's batch (``n`` or beam width, times prompts).
        prompts: how many prompts it sends (a completions ``prompt`` may be a list).
    """

    sequences: int
    prompts: int = 1


def shown(value: str, limit: int = 64) -> str:
    """A client's string as an error message quotes it: at most ``limit`` characters."""
    return value if len(value) <= limit else value[:limit] + "..."


# Fields of the Responses API that a class storing responses offers (``ClassPolicy.store_responses``).
STORED_RESPONSE_FIELDS = frozenset({"previous_response_id"})


def check_fields(method: str, data: Mapping[str, Any], stores_responses: bool = False) -> ShapeError | None:
    """The first field of ``data`` the platform does not offer for ``method``, if any.

    ``stores_responses``: the tenant's class keeps its responses (``previous_response_id``
    is offered)."""
    allowed = ALLOWED_FIELDS[method]
    if stores_responses and method == "responses":
        allowed = allowed | STORED_RESPONSE_FIELDS
    for name in data:
        if name not in allowed:
            why = REFUSED_FIELDS.get(name)
            quoted = shown(name)
            return ShapeError(quoted, f"Unrecognized request argument supplied: {quoted}"
                              + (f" ({why})" if why else ""))
    return None


def check_shape(method: str, data: Mapping[str, Any], max_sequences: int,
                stores_responses: bool = False) -> RequestShape | ShapeError:
    """Bounds of a request whose fields passed ``check_fields``.

    Args:
        method: ``chat`` or ``completions``.
        data: the request's JSON fields.
        max_sequences: the class's bound on sequences per request.
        stores_responses: the tenant's class keeps its responses (``store: true`` is offered).
    """
    model = data.get("model")
    if isinstance(model, str) and len(model) > MAX_MODEL_ID_CHARS:
        return ShapeError("model", f"`model` is longer than {MAX_MODEL_ID_CHARS} characters.")
    for name in ("n", "max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens", "seed", "top_k",
                 "logprobs", "top_logprobs", "truncate_prompt_tokens", "max_tool_calls"):
        error = _check_int(data, name)
        if error is not None:
            return error
    prompts = 1
    if method in ("completions", "embeddings"):
        name = "prompt" if method == "completions" else "input"
        prompt = data.get(name)
        if isinstance(prompt, list) and prompt and not all(isinstance(p, int) for p in prompt):
            prompts = len(prompt)  # a list of strings or of token lists: one sequence each
            if prompts > max_sequences:
                what = "prompts" if method == "completions" else "inputs"
                return ShapeError(name, f"`{name}` lists {prompts} {what}; at most {max_sequences} "
                                  "per request are allowed.")
        if method == "embeddings" and not _is_text_or_tokens(prompt):
            # vLLM also reads a list of chat messages here (rendered with the chat template):
            # not offered, and its tokens could not be counted for the quota beforehand.
            return ShapeError("input", "`input` must be a text, a list of texts, token ids, or a list of "
                              "token-id lists, and not empty.")
    n = data.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) else 1  # else the request model's 400
    if n < 1:
        return ShapeError("n", "`n` must be at least 1.")
    sequences = n * prompts
    if sequences > max_sequences:
        what = "beam width `n`" if data.get("use_beam_search") else "`n`"
        return ShapeError("n", f"{what} is {n} for {prompts} prompt(s): {sequences} sequences; at most "
                          f"{max_sequences} per request are allowed.")
    for name, limit in (("logprobs", MAX_TOP_LOGPROBS if method == "completions" else None),
                        ("top_logprobs", MAX_TOP_LOGPROBS)):
        value = data.get(name)
        if limit is not None and isinstance(value, int) and not isinstance(value, bool) and value > limit:
            return ShapeError(name, f"`{name}` is {value}; at most {limit} is allowed.")
    return _check_sizes(data, stores_responses) or RequestShape(sequences, prompts)


def _is_text_or_tokens(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, str) for v in value):
        return True
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return True
    return all(isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
               for v in value)


def _check_int(data: Mapping[str, Any], name: str) -> ShapeError | None:
    value = data.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        return None  # absent, or a type the request model refuses with its own 400
    if value < 0 and name != "seed" or abs(value) > MAX_INT:
        return ShapeError(name, f"`{name}` is {value}: out of range.")
    return None


def _check_sizes(data: Mapping[str, Any], stores_responses: bool) -> ShapeError | None:
    stop = data.get("stop")
    if isinstance(stop, list):
        if len(stop) > MAX_STOP_SEQUENCES:
            return ShapeError("stop", f"`stop` has {len(stop)} sequences; at most {MAX_STOP_SEQUENCES}.")
        stop_texts = stop
    else:
        stop_texts = [stop]
    if any(isinstance(s, str) and len(s) > MAX_STOP_CHARS for s in stop_texts):
        return ShapeError("stop", f"a `stop` sequence is longer than {MAX_STOP_CHARS} characters.")
    for name in ("stop_token_ids", "allowed_token_ids", "bad_words"):
        value = data.get(name)
        if isinstance(value, list) and len(value) > MAX_TOKEN_ID_LIST:
            return ShapeError(name, f"`{name}` has {len(value)} entries; at most {MAX_TOKEN_ID_LIST}.")
    for name in ("prompt", "input", "stop_token_ids", "allowed_token_ids"):
        if _has_bad_token_id(data.get(name)):
            return ShapeError(name, f"`{name}` holds a token id below 0 or above {MAX_INT}.")
    bias = data.get("logit_bias")
    if isinstance(bias, dict) and len(bias) > MAX_LOGIT_BIAS:
        return ShapeError("logit_bias", f"`logit_bias` has {len(bias)} entries; at most {MAX_LOGIT_BIAS}.")
    tools = data.get("tools")
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        return ShapeError("tools", f"`tools` lists {len(tools)} tools; at most {MAX_TOOLS}.")
    for name, limit in (("response_format", MAX_COMPILED_BYTES), ("structured_outputs", MAX_COMPILED_BYTES),
                        ("tools", MAX_TOOLS_BYTES)):
        value = data.get(name)
        if value is not None and _json_size(value) > limit:
            return ShapeError(name, f"`{name}` is larger than {limit} bytes as JSON.")
    if data.get("store") is True and not stores_responses:
        # OpenAI's default is to store; a class that keeps no responses says so to an app that
        # asks for it explicitly, rather than letting it find nothing later.
        return ShapeError("store", "`store: true` is not offered: your tenant's class keeps no response "
                          "state; send the conversation in `input` (or leave `store` out).")
    previous = data.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not 0 < len(previous) <= MAX_MODEL_ID_CHARS):
        return ShapeError("previous_response_id", "`previous_response_id` must be a response id.")
    text = data.get("text")
    if text is not None and _json_size(text) > MAX_COMPILED_BYTES:
        return ShapeError("text", f"`text` is larger than {MAX_COMPILED_BYTES} bytes as JSON.")
    return _check_structured_outputs(data.get("structured_outputs")) or _check_tool_choice(data)


def _check_structured_outputs(value: Any) -> ShapeError | None:
    if not isinstance(value, dict):
        return None  # absent, or a type the request model refuses
    for name in value:
        if name not in STRUCTURED_OUTPUT_FORMS:
            shown = str(name)[:64]
            return ShapeError("structured_outputs", f"`structured_outputs.{shown}` is not offered; the forms are "
                              f"{', '.join(sorted(STRUCTURED_OUTPUT_FORMS))}.")
    choice = value.get("choice")
    if isinstance(choice, list) and len(choice) > MAX_CHOICES:
        return ShapeError("structured_outputs", f"`structured_outputs.choice` has {len(choice)} entries; "
                          f"at most {MAX_CHOICES}.")
    return None


def _check_tool_choice(data: Mapping[str, Any]) -> ShapeError | None:
    """A named tool choice must name a tool the request defines (vLLM answers 500 otherwise)."""
    choice = data.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type", "function") != "function":
        return None
    # Chat names it as {"function": {"name": ...}}, the Responses API as {"name": ...}.
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if not isinstance(name, str):
        return ShapeError("tool_choice", "a named `tool_choice` must give the function's name.")
    tools = data.get("tools") if isinstance(data.get("tools"), list) else []
    defined = {(t["function"].get("name") if isinstance(t.get("function"), dict) else t.get("name"))
               for t in tools if isinstance(t, dict)}
    if name not in defined:
        return ShapeError("tool_choice", f"`tool_choice` names the tool `{shown(name)}`, which `tools` does not define.")
    return None


def _has_bad_token_id(value: Any) -> bool:
    """Token ids (an int list, or a list of them) outside 0 .. 2^31-1 (vLLM turns 2^63 into a 500)."""
    if not isinstance(value, list):
        return False
    for item in value:
        if isinstance(item, list):
            if _has_bad_token_id(item):
                return True
        elif isinstance(item, int) and not isinstance(item, bool) and not 0 <= item <= MAX_INT:
            return True
    return False


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        return MAX_TOOLS_BYTES + 1  # not JSON at all: the request model refuses it anyway
