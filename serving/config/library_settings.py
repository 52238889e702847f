"""Library settings that pass through the platform config, checked by the libraries' own definitions.

Engine arguments are checked against vLLM's ``AsyncEngineArgs`` fields, deployment options
against Ray Serve's ``DeploymentSchema``: an unknown key is an error, never a silent default.

Those two checks import vLLM and Ray (about 8 s on a 2-core machine). A load that only needs
tenants, domains and file paths (``fabriek keys``, ``fabriek usage``) passes the validation
context ``{SKIP_LIBRARY_CHECKS: True}`` and skips them; fabriek's own rules still apply.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from pydantic import ValidationError, ValidationInfo

# Validation-context key: when true, settings are not checked against vLLM's and Ray's definitions.
SKIP_LIBRARY_CHECKS = "skip_library_checks"


def _is_skipping_library_checks(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(SKIP_LIBRARY_CHECKS))


@functools.cache
def _vllm_engine_arg_names() -> frozenset[str]:
    # Imported lazily: vLLM takes seconds to import and only engine configs need it.
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


@functools.cache
def _vllm_tool_parsers() -> frozenset[str]:
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    return frozenset(ToolParserManager.list_registered())


def check_tool_calling(args: dict[str, Any]) -> None:
    """A model's merged engine arguments: ``auto`` tool choice needs a parser to read the calls.

    Raises:
        ValueError: ``enable_auto_tool_choice`` without ``tool_call_parser``.
    """
    if args.get("enable_auto_tool_choice") and not args.get("tool_call_parser"):
        raise ValueError("enable_auto_tool_choice needs `tool_call_parser` (the parser that reads the "
                         "model's tool calls back, e.g. `hermes`)")


# Set by fabriek from `source` and the model id; a config must not set them.
_MANAGED_ENGINE_ARGS = frozenset({"model", "served_model_name", "tokenizer"})

# vLLM's OpenAI-server settings (``FrontendArgs``) that may ride along with the engine
# arguments (Ray Serve LLM hands them to vLLM's serving objects): how a model's chat is
# rendered and its tool calls parsed. The rest of ``FrontendArgs`` is the server's own
# (host, TLS, API key: fabriek's front door), lets requests bring templates
# (``trust_request_chat_template``), logs content (``enable_log_outputs``), or loads
# adapters outside fabriek's ownership rules (``lora_modules``).
FRONTEND_ENGINE_ARGS = frozenset({
    "tool_call_parser", "enable_auto_tool_choice", "exclude_tools_when_tool_choice_none", "tool_strict_level",
    "chat_template", "chat_template_content_format", "default_chat_template_kwargs", "response_role",
    "enable_prompt_tokens_details"})


def check_engine_args(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Refuse engine arguments fabriek sets itself, unknown to vLLM, or that log content."""
    managed = sorted(set(value) & _MANAGED_ENGINE_ARGS)
    if managed:
        raise ValueError(f"{managed} are set by fabriek from the model's id and source; remove them")
    if not _is_skipping_library_checks(info):
        unknown = sorted(set(value) - _vllm_engine_arg_names() - FRONTEND_ENGINE_ARGS)
        if unknown:
            raise ValueError(f"unknown vLLM engine argument(s) {unknown}; see `AsyncEngineArgs`, and "
                             f"of vLLM's server settings fabriek passes {sorted(FRONTEND_ENGINE_ARGS)}")
        parser = value.get("tool_call_parser")
        if parser is not None and parser not in _vllm_tool_parsers():
            raise ValueError(f"tool_call_parser {parser!r} is not one of vLLM's tool-call parsers "
                             f"({', '.join(sorted(_vllm_tool_parsers()))})")
    if value.get("enable_log_requests"):
        # vLLM's request logging writes prompts into the logs; no tenant's content may
        # ever reach a log line.
        raise ValueError("enable_log_requests would log request content; fabriek never does, remove it")
    return value


def check_deployment_options(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Refuse deployment options fabriek sets itself, or that Ray Serve does not know or accept."""
    # `name` is fabriek's to choose (pool--model); placement groups are Ray Serve LLM's.
    managed = sorted(set(value) & {"name", "placement_group_bundles", "placement_group_strategy"})
    if managed:
        raise ValueError(f"{managed} are set by fabriek and Ray Serve LLM; remove them")
    actor_options = value.get("ray_actor_options") or {}
    if not isinstance(actor_options, dict):
        raise ValueError("ray_actor_options must be a mapping")
    if _is_skipping_library_checks(info):
        return value
    # Ray's schema ignores unknown keys; a typo must not silently fall back to a default.
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema

    unknown = sorted(set(value) - set(DeploymentSchema.model_fields))
    unknown += sorted(f"ray_actor_options.{k}" for k in
                      set(actor_options) - set(RayActorOptionsSchema.model_fields))
    if unknown:
        raise ValueError(f"unknown Ray Serve deployment option(s) {unknown}")
    try:
        DeploymentSchema(name="check", **value)
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ValueError(f"not valid Ray Serve deployment options: {problems}") from None
    return value
