"""Contract tests: the private parts of Ray Serve LLM and vLLM that fabriek leans on.

Each of these is named in a comment where fabriek uses it; when an upgrade moves one, this
fails by name instead of a replica failing at run time.
"""

from __future__ import annotations

import copy
import inspect

from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
from vllm.v1.engine.async_llm import AsyncLLM


def test_ray_vllm_engine_keeps_vllms_async_llm_as_engine_client():
    # FabriekLLMServer.probe_engine and num_unfinished_requests reach vLLM through it.
    assert "self._engine_client" in inspect.getsource(VLLMEngine)


def test_vllm_async_llm_has_the_calls_fabriek_makes():
    # probe_engine: a round trip to the engine core; num_unfinished_requests: its count.
    assert inspect.iscoroutinefunction(AsyncLLM.is_sleeping)
    assert callable(AsyncLLM.get_num_unfinished_requests)


def test_ray_llm_server_batches_through_the_hook_fabriek_overrides():
    # FabriekLLMServer._batch_output_stream (first chunk at once) and its interval setting.
    assert "_batch_output_stream" in inspect.getsource(LLMServer)
    assert callable(LLMServer._get_batch_interval_ms)
    # The direct layout's front door starts its engine through LLMServer's async constructor
    # and shuts it down through its async __del__.
    assert inspect.iscoroutinefunction(LLMServer.__init__)
    assert inspect.iscoroutinefunction(LLMServer.__del__)


def test_ray_chat_sanitizer_is_importable():
    from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

    assert callable(_sanitize_chat_completion_request)


def test_vllm_output_processor_keeps_what_the_energy_accountant_reads():
    # serving.engine.energy_accountant.vllm_progress reads vLLM's per-request state: a real
    # RequestState, as the output processor keeps it, must give the accountant its numbers.
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.output_processor import OutputProcessor, RequestState

    from serving.engine.energy_accountant import vllm_progress

    assert "self.request_states" in inspect.getsource(OutputProcessor.__init__)
    rid = "fabriek-" + "ab" * 16
    state = RequestState(request_id=f"chatcmpl-{rid}-1234abcd", external_req_id=f"chatcmpl-{rid}", parent_req=None,
                         request_index=0, lora_request=None, output_kind=RequestOutputKind.DELTA, prompt=None,
                         prompt_token_ids=[1, 2, 3, 4], prompt_embeds=None, logprobs_processor=None,
                         detokenizer=None, max_tokens_param=16, arrival_time=0.0, queue=None, log_stats=True,
                         stream_interval=1)
    holder = type("AsyncLLM", (), {})()
    holder.output_processor = type("OutputProcessor", (), {"request_states": {state.request_id: state}})()
    read = vllm_progress(holder)
    assert read() == {rid: (0, 0)}  # still prefilling: nothing counted yet
    state.is_prefilling = False
    state.num_cached_tokens = 1
    state.stats.num_generation_tokens = 5
    assert read() == {rid: (3, 5)}
    # A second vLLM request of the same fabriek request (n=2) adds to it; another's does not.
    twin = copy.copy(state)
    twin.request_id = f"chatcmpl-{rid}-5678abcd"
    other = copy.copy(state)
    other.request_id, other.external_req_id = "chatcmpl-4b7e-0", "chatcmpl-4b7e"  # not fabriek's
    holder.output_processor.request_states.update({twin.request_id: twin, other.request_id: other})
    assert read() == {rid: (6, 10)}


def test_ray_vllm_engine_keeps_vllms_app_state_with_the_responses_server():
    """FabriekLLMServer.responses reaches vLLM's own Responses serving object through Ray's
    engine (Ray Serve LLM has no Responses method)."""
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses

    assert "self._app_state = state" in inspect.getsource(VLLMEngine)
    import vllm.entrypoints.generate.api_router as router

    assert "state.openai_serving_responses" in inspect.getsource(router)
    assert list(inspect.signature(OpenAIServingResponses.create_responses).parameters)[:3] == [
        "self", "request", "raw_request"]


def test_ray_lora_hooks_fabriek_uses_and_overrides():
    # serving.engine.lora_adapters: adapters load through VLLMEngine.resolve_lora with Ray's
    # DiskMultiplexConfig, and object-store ones are copied by Ray's LoRA download.
    from ray.llm._internal.common.utils.lora_utils import sync_files_with_lock
    from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

    assert inspect.iscoroutinefunction(VLLMEngine.resolve_lora)
    assert {"model_id", "local_path", "max_total_tokens", "lora_assigned_int_id"} <= set(DiskMultiplexConfig.model_fields)
    assert list(inspect.signature(sync_files_with_lock).parameters)[:2] == ["bucket_uri", "local_path"]
    # FabriekLLMServer._maybe_resolve_lora_from_multiplex is a no-op: every request of
    # LLMServer passes through it, so a client's multiplexing header loads nothing.
    assert "self._maybe_resolve_lora_from_multiplex()" in inspect.getsource(LLMServer._run_request)
    assert inspect.iscoroutinefunction(LLMServer._maybe_resolve_lora_from_multiplex)
