"""The Ray Serve application builder: platform config in, Serve application out.

Usable wherever Ray Serve takes an import path, for example a Serve config file::

    applications:
      - name: fabriek
        import_path: serving.app:build_app
        args: {config_path: /etc/fabriek/platform.yaml}   # or {config: {...inline...}}
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application

from serving.config import ConfigError, PlatformConfig, load_config
from serving.engines import build_engine_deployments
from serving.ingress import OpenAIIngress

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
    """Bind the ingress to one engine deployment per model.

    Raises:
        ConfigError: a model is served by more than one pool (routing requests to a
            pool by tenant is not built yet, so a second pool would never get traffic).
    """
    for model in config.models:
        pools = [p.name for p in config.pools if model.id in p.models]
        if len(pools) > 1:
            raise ConfigError(f"models[{model.id}]: served by pools {pools}; until requests are "
                              "routed to pools by tenant, a model may be served by one pool only")
    engines = build_engine_deployments(config)  # one per model, checked above
    handles = {engine.model_id: engine.app for engine in engines}
    cards = {engine.model_id: {"max_model_len": engine.engine_args.get("max_model_len")}
             for engine in engines}
    ingress = serve.deployment(OpenAIIngress, name="OpenAIIngress", **config.ingress.deployment)
    return ingress.bind(handles, cards, config.http.max_request_bytes)
