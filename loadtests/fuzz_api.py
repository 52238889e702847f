"""Fuzz both front doors of a fabriek server: schemathesis against the OpenAPI document and a
property-based gRPC fuzz. The property (issue 15): no 5xx but 503, no INTERNAL/UNKNOWN/DATA_LOSS.

Starts a server of its own (the shipped config plus a commercial tenant ``fuzz`` whose quota
caps ``max_tokens`` at 16 and prompts at 256 tokens, so the CPU engine answers fast; keys,
salts, ledgers and ports of its own) or fuzzes a running one (``--base-url``, ``--key``,
``--grpc-target``). ``loadtests/fuzz_http.py`` and ``loadtests/fuzz_grpc.py`` hold the two
fuzzers; ``tests/serving/test_e2e_fuzz.py`` runs a few examples of each in CI.

Usage (after `make install`; ~6 minutes on a 2-core CPU machine, start-up included):
    .venv/bin/python loadtests/fuzz_api.py [--examples 100] [--grpc-examples 600]
    .venv/bin/python loadtests/fuzz_api.py --base-url http://127.0.0.1:8000/commercial \\
        --key "$KEY" --grpc-target 127.0.0.1:9000 --model smollm2-135m-instruct
(``$KEY``: a key of a tenant of that domain whose quota caps ``max_tokens``; an uncapped one
makes every example that reaches the engine generate up to the model's context.)
Prints a summary (requests, statuses, each failure with its reproducer) and writes
docs/benchmarks/fuzz-<date>.json; exits 1 when a failure was found.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.front_doors import base_url, create_key, free_port, free_ports, grpc_target, health_urls, own_files_and_ports  # noqa: E402
from loadtests.fuzz_grpc import run_grpc_fuzz  # noqa: E402
from loadtests.fuzz_http import run_http_fuzz  # noqa: E402
from serving.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402

FUZZ_TENANT = "fuzz"
FUZZ_QUOTA = {"max_tokens": 16, "max_prompt_tokens": 256}


def fuzz_config(path: Path) -> dict:
    """The platform config at ``path`` with the tenant ``fuzz`` (its quota capped; of the class
    ``commercial``, else the config's last class; the config's first model)."""
    config = yaml.safe_load(path.read_text())
    tenant_class = "commercial" if "commercial" in config["classes"] else list(config["classes"])[-1]
    config["tenants"].append({"id": FUZZ_TENANT, "class": tenant_class, "models": [config["models"][0]["id"]],
                              "quota": FUZZ_QUOTA})
    return config


def fuzz(base: str, key: str, grpc_target: str, domain: str, args, other_domains: tuple[str, ...]) -> dict:
    """Both fuzzers against one domain; their results and how long each took."""
    started = time.monotonic()
    http = run_http_fuzz(base, key, examples=args.examples, model=args.model)
    http["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"HTTP: {http['requests']} requests in {http['elapsed_s']} s", flush=True)
    started = time.monotonic()
    grpc = run_grpc_fuzz(grpc_target, domain, key, examples=args.grpc_examples, model=args.model,
                         other_domains=other_domains)
    grpc["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"gRPC: {grpc['requests']} calls in {grpc['elapsed_s']} s", flush=True)
    return {"http": http, "grpc": grpc}


def with_own_server(args) -> dict:
    """Start a server (the config plus the tenant ``fuzz``), fuzz it, stop it."""
    # Imported here: bench_vs_vllm keeps the environment as it is now for the server.
    from loadtests.bench_vs_vllm import start, stop, wait_ready

    logs = Path(tempfile.mkdtemp(prefix="fabriek-fuzz-"))
    config = fuzz_config(args.config)
    own_files_and_ports(config, logs, "fuzz")
    path = logs / "platform.yaml"
    path.write_text(yaml.safe_dump(config))
    key = create_key(config, FUZZ_TENANT)
    port = free_ports(2)
    log = logs / "serve.log"
    process = start([sys.executable, "-m", "serving.cli", "serve", "--config", str(path),
                     "--http-port", str(port), "--dashboard-port", str(free_ports(2))], log)
    loaded = load_config(config)
    domain = loaded.domain_of(FUZZ_TENANT).name
    try:
        ready_s = sum(wait_ready(url, process, log) for url in health_urls(config, port))
        print(f"server ready in {ready_s:.0f} s (log: {log})", flush=True)
        args.model = args.model or config["models"][0]["id"]
        others = tuple(d.name for d in loaded.domains() if d.name != domain)
        result = fuzz(base_url(config, FUZZ_TENANT, port), key, grpc_target(config, FUZZ_TENANT),
                      domain, args, others)
    finally:
        stop(process)
    result["server"] = {"config": "shipped config + tenant fuzz" if args.config == DEFAULT_CONFIG_PATH
                        else str(args.config), "tenant": FUZZ_TENANT, "quota": FUZZ_QUOTA, "domain": domain,
                        "ready_s": round(ready_s)}
    return result


def summary(result: dict) -> str:
    """What was sent, what came back, and each kind of failure with a reproducer."""
    http, grpc = result["http"], result["grpc"]
    lines = [f"HTTP: {http['requests']} requests"]
    for name, operations in http["passes"].items():
        for label, statuses in operations.items():
            lines.append(f"  {name:<16} {label:<28} {statuses}")
    lines.append(f"gRPC: {grpc['requests']} calls")
    for rpc, codes in grpc["codes"].items():
        lines.append(f"  {rpc:<16} {codes}")
    lines.append(f"failures (5xx other than 503; INTERNAL, UNKNOWN, DATA_LOSS): "
                 f"{len(http['failures']) + len(grpc['failures'])}")
    for (where, status, answer), found in _kinds(http["failures"], "operation", "status", "answer").items():
        lines.append(f"  {len(found)} x HTTP {status} ({where}): {answer}\n    {found[0]['reproducer'][:600]}")
    for (rpc, code, details), found in _kinds(grpc["failures"], "rpc", "code", "details").items():
        lines.append(f"  {len(found)} x gRPC {code} ({rpc}): {details}\n    request: {found[0]['request'][:300]}"
                     f"\n    metadata: {found[0]['metadata']}")
    if http["unauthenticated_not_401"]:
        lines.append(f"unauthenticated /v1 requests not answered 401: {len(http['unauthenticated_not_401'])}")
    if http["negative_accepted"]:
        lines.append(f"negative examples answered 2xx (the document is stricter than the server): "
                     f"{len(http['negative_accepted'])}, e.g. {http['negative_accepted'][0]['body'][:300]}")
    lines.append("slowest HTTP requests: " + ", ".join(f"{r['elapsed_s']} s ({r['operation']}, {r['status']})"
                                                       for r in http["slowest"]))
    return "\n".join(lines)


def _kinds(failures: list[dict], *fields: str) -> dict[tuple, list[dict]]:
    """Failures grouped by where and what (the first 120 characters of the message)."""
    kinds: dict[tuple, list[dict]] = {}
    for failure in failures:
        kind = tuple(str(failure[f])[:120] for f in fields)
        kinds.setdefault(kind, []).append(failure)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--base-url", help="a running domain's front door, http://HOST:PORT/<domain> "
                        "(default: start a server)")
    parser.add_argument("--key", default=os.environ.get("FABRIEK_KEY"), help="a key of a tenant of that domain "
                        "whose quota caps max_tokens (default: $FABRIEK_KEY)")
    parser.add_argument("--grpc-target", default="127.0.0.1:9000", help="with --base-url: the gRPC address")
    parser.add_argument("--model", default=None, help="a model id the tenant may use, mixed into the generated "
                        "requests (default: the started server's first model; none with --base-url)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config of the server started")
    parser.add_argument("--examples", type=int, default=100, help="schemathesis examples per operation and pass")
    parser.add_argument("--grpc-examples", type=int, default=600, help="gRPC calls, spread over every RPC")
    parser.add_argument("--out", type=Path, default=None, help="default: docs/benchmarks/fuzz-<date>.json")
    args = parser.parse_args()
    started = time.monotonic()
    if args.base_url:
        if not args.key:
            parser.error("--base-url needs --key (or $FABRIEK_KEY)")
        domain = args.base_url.rstrip("/").rsplit("/", 1)[-1]
        result = fuzz(args.base_url.rstrip("/"), args.key, args.grpc_target, domain, args, ())
        result["server"] = {"base_url": args.base_url, "grpc_target": args.grpc_target}
    else:
        result = with_own_server(args)
    failures = len(result["http"]["failures"]) + len(result["grpc"]["failures"])
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": shlex.join([".venv/bin/python", "loadtests/fuzz_api.py", *sys.argv[1:]]).replace(
            args.key or "\0", "$FABRIEK_KEY"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "examples_per_operation_and_pass": args.examples, "grpc_examples": args.grpc_examples,
        "elapsed_s": round(time.monotonic() - started), "failures": failures, **result}
    print(summary(report))
    out = args.out or REPO / "docs" / "benchmarks" / f"fuzz-{report['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
