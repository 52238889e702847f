"""The Ray Serve application builder: platform config in, Serve application out.

Usable wherever Ray Serve takes an import path, for example a Serve config file::

    applications:
      - name: fabriek
        import_path: serving.app:build_app
        args: {config_path: /etc/fabriek/platform.yaml}   # or {config: {...inline...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from routers import Route
from routers.quota import QuotaLimits
from serving.admission.admission_controller import AdmissionController
from serving.config import PlatformConfig, load_config
from serving.engine.engines import build_engine_deployments
from serving.frontdoor.ingress import OpenAIIngress

APP_NAME = "fabriek"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the fabriek Serve application from ``args``.

    Args:
        args: ``{"config_path": PATH}`` or ``{"config": {...}}``; neither means the
            default local CPU config shipped with fabriek.

    Raises:
        ConfigError: the config is invalid.
        ModelPrepareError: a built-in model is not prepared.
    """
    args = dict(args or {})
    unknown = set(args) - {"config", "config_path"}
    if unknown or ("config" in args and "config_path" in args):
        raise ValueError(f"build_app takes `config` or `config_path`, got {sorted(args)}")
    config = load_config(args.get("config", args.get("config_path")))
    return build_app_from_config(config)


def build_app_from_config(config: PlatformConfig) -> Application:
    """Bind the ingress (HTTP and gRPC) to one engine deployment per pool and model.

    A model may be served by several pools (the default config serves the same model to
    government and commercial tenants on separate pools): each (pool, model) is its own
    deployment, named ``<pool>--...``, and the ingress admits a tenant's requests only to
    pools of its class.
    """
    engines = build_engine_deployments(config)
    handles = {Route(e.pool, e.model_id): e.app for e in engines}
    cards = {e.model_id: {"max_model_len": e.engine_args.get("max_model_len")} for e in engines}
    # Token counting (gRPC CountTokens) needs the tokenizer on the ingress's node: local
    # model directories have it; object-store models are only mirrored onto engine nodes.
    tokenizers = {e.model_id: str(Path(e.model_source) / "tokenizer.json") for e in engines
                  if isinstance(e.model_source, str) and (Path(e.model_source) / "tokenizer.json").is_file()}
    auth = config.auth
    ingress = serve.deployment(OpenAIIngress, name="OpenAIIngress", **config.ingress.deployment)
    # Paths are resolved here, on the driver, so every ingress replica uses the same files.
    return ingress.bind(handles, cards, config.http.max_request_bytes, tenancy=config.tenancy(),
                        key_file=auth.resolved_key_file(),
                        cache_salt_secret_file=auth.resolved_cache_salt_secret_file(),
                        key_reload_interval_s=auth.key_reload_interval_s,
                        admission_controller=bind_admission_controller(config),
                        ledger=config.ledger,
                        tokenizer_files=tokenizers,
                        quotas=quotas_of(config), cpu_nice=config.ingress.cpu_nice)


def bind_admission_controller(config: PlatformConfig) -> Application:
    """The one replica that holds quotas and pool queues for every ingress replica.

    It only keeps counters (no CPU reservation); a single replica is what makes quotas and
    fairness exact across ingress replicas (see ``serving.admission.admission_controller``).
    """
    route_limits = {Route(p.name, m): p.admission.to_limits() for p in config.pools for m in p.models}
    # Each route's fair shares count only the tenants that may use it.
    route_weights = {r: {t.id: t.weight for t in config.tenants
                         if r.pool in config.classes[t.tenant_class].pools and r.model_id in t.models}
                     for r in route_limits}
    # No access log: it would write two lines (acquire, release) per request on the hot
    # path, for what the ingress's own access line already says.
    controller = serve.deployment(AdmissionController, name="AdmissionController", num_replicas=1,
                                  max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0},
                                  logging_config={"enable_access_log": False})
    return controller.bind(quotas_of(config), route_limits, route_weights, cpu_nice=config.ingress.cpu_nice)


def quotas_of(config: PlatformConfig) -> dict[str, QuotaLimits]:
    """Tenant id -> quota, as both the controller and the ingress take them."""
    return {t.id: t.quota.to_limits() for t in config.tenants}
