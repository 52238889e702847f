"""Serve the platform config's first model with Ray Serve LLM's stock OpenAI app.

The reference point for fabriek's ingress: the same LLMConfig (engine arguments, model
source) behind ``ray.serve.llm.build_openai_app`` and Ray's default data path. Used by
``bench_vs_vllm.py --only ray-stock``; runs until SIGTERM.

    .venv/bin/python loadtests/stock_ray_serve_llm.py --http-port 8000 [--config PATH]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.config import load_config  # noqa: E402
from serving.engine.engines import llm_config_for, resolve_model_source  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    pool = config.pools[0]
    model = config.model(pool.models[0])

    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    # The engine's bundles ask for the pool's resource (serving.engine.engines): declare it.
    ray.init(num_cpus=config.local.num_cpus, resources={pool.ray_resource: 1.0}, include_dashboard=False)
    signal.signal(signal.SIGTERM, lambda *_: (serve.shutdown(), ray.shutdown(), sys.exit(0)))
    serve.start(http_options={"host": "127.0.0.1", "port": args.http_port})
    llm_config = llm_config_for(pool, model, resolve_model_source(model))
    serve.run(build_openai_app({"llm_configs": [llm_config]}), name="stock", route_prefix="/")
    print("stock Ray Serve LLM ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
