"""From the platform config to Ray Serve LLM engine deployments, one per pool and model.

Each deployment is pinned to its pool's nodes: every placement-group bundle (the replica
with its engine, and each further engine worker) asks for a little of the Ray custom
resource ``pool_<name>``, which only that pool's nodes advertise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from serving.records import tracing
from serving.engine.cpu_affinity import POOL_NICE_ENV
from serving.config import (BUILTIN_SCHEME, OBJECT_STORE_SCHEMES, POOL_RESOURCE_PER_REPLICA, ModelSpec,
                            PlatformConfig, PoolSpec)
from serving.engine.default_model import ModelPrepareError, builtin_model_dir, builtin_models, verify_model_dir
from serving.config.energy_specs import EnergySpec
from serving.engine.energy_sampler import ENERGY_KEY, EnergySettings
from serving.engine.llm_server import MAX_REQUEST_S_KEY, FabriekLLMServer
from serving.engine.lora_adapters import ADAPTERS_KEY

# Engine replicas never reach a model hub: weights come from the config's source.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Ray Serve LLM's default bundle per engine worker (its CPUAccelerator / GPUAccelerator).
_WORKER_BUNDLE = {"cpu": {"CPU": 1}, "gpu": {"GPU": 1}}


@dataclass(frozen=True)
class EngineDeployment:
    """One engine deployment: a model served by a pool, ready to bind."""

    pool: str
    model_id: str
    llm_config: LLMConfig
    model_source: str | dict[str, str]  # a local directory, or an object-store mirror config

    @property
    def engine_args(self) -> dict[str, Any]:
        return self.llm_config.engine_kwargs

    @property
    def is_embedding(self) -> bool:
        """Whether it serves embeddings (vLLM's pooling runner), not chat and completions."""
        return is_embedding_model(self.engine_args)

    def bind(self, deployment_cls: type[FabriekLLMServer] = FabriekLLMServer, **kwargs: Any) -> Application:
        """The deployment, named ``<pool>--<model>``, of ``deployment_cls`` (``FabriekLLMServer``,
        or a subclass that is also the domain's front door, given ``kwargs``)."""
        return build_llm_deployment(self.llm_config, name_prefix=f"{self.pool}--", deployment_cls=deployment_cls,
                                    bind_kwargs=kwargs or None)


def resolve_model_source(model: ModelSpec) -> str | dict[str, str]:
    """Turn a config `source` into what Ray's ModelLoadingConfig takes.

    Raises:
        ModelPrepareError: a fabriek:// model is not prepared or fails its integrity check.
    """
    source = model.source
    if source.startswith(BUILTIN_SCHEME):
        name = source.removeprefix(BUILTIN_SCHEME)
        if name not in builtin_models():
            raise ModelPrepareError(f"models[{model.id}].source: unknown built-in model {name!r}; "
                                    f"the built-in models are {sorted(builtin_models())}")
        path = builtin_model_dir(name)
        verify_model_dir(path)
        return str(path)
    if source.startswith(OBJECT_STORE_SCHEMES):
        return {"bucket_uri": source}
    return str(Path(source).expanduser().resolve())


def resolve_adapter_source(source: str) -> str:
    """An adapter's local directory as an absolute path; an object-store URI as it is (the
    engine copies it onto its node when it starts)."""
    return source if source.startswith(OBJECT_STORE_SCHEMES) else str(Path(source).expanduser().resolve())


def is_embedding_model(engine_args: dict[str, Any]) -> bool:
    """Whether engine arguments run vLLM's pooling runner (``runner: pooling``): an embedding model."""
    return engine_args.get("runner") == "pooling"


def engine_args_for(pool: PoolSpec, model: ModelSpec) -> dict[str, Any]:
    """vLLM engine arguments of `model` on `pool`; the pool's override the model's.

    Request logging is off explicitly (not left to Ray's default): it would write prompts
    into the logs.
    """
    return {**model.engine_args, **pool.engine_args, "enable_log_requests": False}


def llm_config_for(pool: PoolSpec, model: ModelSpec, model_source: str | dict[str, str],
                   max_request_s: float | None = None, energy: EnergySpec | None = None,
                   adapters: dict[str, str] | None = None) -> LLMConfig:
    """Build the Ray Serve LLM config of `model` on `pool`.

    Args:
        adapters: adapter id -> source of the tenants' LoRA adapters this engine serves
            (``PlatformConfig.adapters_on``); it loads them when it starts (vLLM's LoRA).
        max_request_s: the engine's own bound on one request (see ``stamp_first``).
        energy: how the engine meters itself (``serving.engine.energy_sampler``); None: it does not.
    """
    # Read where the app is built: the launcher, or the Serve controller in the cluster.
    tracing_args, tracing_env = tracing.vllm_tracing(os.environ)
    engine_kwargs = {**engine_args_for(pool, model), **tracing_args}
    if adapters:
        engine_kwargs["enable_lora"] = True
    # Ray merges runtime_env one level deep: keep the pool's own env_vars beside ours.
    actor_options = pool.deployment.get("ray_actor_options") or {}
    pool_env = dict((actor_options.get("runtime_env") or {}).get("env_vars") or {})
    if pool.cpu_threads_bind is not None:
        # Read by vLLM's CPU worker when it binds its OpenMP threads (vllm.envs).
        pool_env["VLLM_CPU_OMP_THREADS_BIND"] = pool.cpu_threads_bind
    if pool.cpu_nice is not None:
        pool_env[POOL_NICE_ENV] = str(pool.cpu_nice)  # read by serving.engine.cpu_affinity
    return LLMConfig(
        model_loading_config={"model_id": model.id, "model_source": model_source},
        engine_kwargs=engine_kwargs,
        accelerator_config={"kind": pool.accelerator},
        # Ray Serve LLM adds the replica's own resources to the first bundle, so the
        # replica, its vLLM engine process and any engine workers all land on pool nodes.
        placement_group_config={"bundle_per_worker": {**_WORKER_BUNDLE[pool.accelerator],
                                                      pool.ray_resource: POOL_RESOURCE_PER_REPLICA}},
        deployment_config=dict(pool.deployment),
        runtime_env={"env_vars": {**pool_env, **tracing_env, **_OFFLINE_ENV}},
        # Engine stats feed the Prometheus metrics on the Ray metrics endpoint.
        log_engine_metrics=True,
        experimental_configs={
            **({} if max_request_s is None else {MAX_REQUEST_S_KEY: max_request_s}),
            **({ADAPTERS_KEY: {name: resolve_adapter_source(src) for name, src in adapters.items()}}
               if adapters else {}),
            **({} if energy is None else {ENERGY_KEY: EnergySettings(
                pool.name, pool.accelerator, pool.power.counters, energy.sample_interval_s,
                energy.prefill_weight, energy.powercap_root).as_dict()}),
        },
    )


# The engine's bound exceeds the front door's: a live request always ends at the front door
# (504, charged what it produced); only an orphan, whose front door died, meets this one.
ENGINE_TIME_LIMIT_GRACE_S = 30.0


def engine_time_limit_s(config: PlatformConfig, pool: str) -> float | None:
    """The longest time limit of the classes that use ``pool``, plus a grace."""
    limits = [spec.max_request_s for spec in config.classes.values() if pool in spec.pools]
    return max(limits) + ENGINE_TIME_LIMIT_GRACE_S if limits else None


def engine_deployments(config: PlatformConfig) -> list[EngineDeployment]:
    """One engine deployment per (pool, model), in config order."""
    sources = {m.id: resolve_model_source(m) for m in config.models}
    return [EngineDeployment(pool.name, model_id, llm_config_for(pool, config.model(model_id), sources[model_id],
                                                                 engine_time_limit_s(config, pool.name),
                                                                 config.energy, config.adapters_on(pool.name, model_id)),
                             sources[model_id])
            for pool in config.pools for model_id in pool.models]
