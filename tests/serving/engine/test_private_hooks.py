"""Contract tests: the private parts of Ray Serve LLM and vLLM that fabriek leans on.

Each of these is named in a comment where fabriek uses it; when an upgrade moves one, this
fails by name instead of a replica failing at run time.
"""

from __future__ import annotations

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
