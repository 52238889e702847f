"""An attacker inside the commercial domain's Ray cluster, trying the government's.

Run as ``python tests/serving/cluster_probe.py COMMERCIAL_GCS GOVERNMENT_GCS GOVERNMENT_DASHBOARD_URL
[TARGETS]`` with the commercial cluster's token (``RAY_AUTH_TOKEN_PATH``) and nothing else.
It joins the commercial cluster as a driver and runs one task there: code execution in a
commercial Ray worker, the foothold a vLLM deserialization bug would give. From inside that
worker it tries the government cluster's GCS, dashboard, job API, state API and Serve API
with everything the worker holds, and the government's files and processes named in TARGETS
(JSON: ``files``, ``dirs``, ``pids``), and prints what each attempt got, as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import ray

# The government dashboard's APIs an attacker would use: read the cluster, run code, stop it.
DASHBOARD_ATTEMPTS = (("version", "GET", "/api/version"), ("jobs", "GET", "/api/jobs/"),
                      ("submit_job", "POST", "/api/jobs/"), ("actors", "GET", "/api/v0/actors"),
                      ("serve_applications", "GET", "/api/serve/applications/"),
                      ("delete_serve", "DELETE", "/api/serve/applications/"))
GCS_TIMEOUT_S = 45


def _outcome(attempt) -> str:
    try:
        attempt()
        return "allowed"
    except PermissionError:
        return "PermissionError"
    except OSError as err:
        return type(err).__name__


def try_government_files(targets: dict) -> dict:
    """Read the government domain's files, list its directories, and read the memory map,
    environment and signals of its processes: what each attempt got."""
    results = {"uid": os.getuid()}
    for path in targets.get("files", []):
        results[f"read {path}"] = _outcome(lambda p=path: Path(p).read_bytes())
    for path in targets.get("dirs", []):
        results[f"list {path}"] = _outcome(lambda p=path: os.listdir(p))
    for pid in targets.get("pids", []):
        results[f"environ {pid}"] = _outcome(lambda p=pid: Path(f"/proc/{p}/environ").read_bytes())
        results[f"mem {pid}"] = _outcome(lambda p=pid: open(f"/proc/{p}/mem", "rb").close())
        results[f"signal {pid}"] = _outcome(lambda p=pid: os.kill(p, 0))
    return results


@ray.remote(num_cpus=0)
def attack(government_gcs: str, government_dashboard: str, targets: dict) -> dict:
    """What a commercial worker process gets when it tries the government cluster."""
    results = {"worker_token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
               "worker_has_token_in_env": "RAY_AUTH_TOKEN" in os.environ,
               "files": try_government_files(targets)}
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    # The GCS: what `ray status` (a GCS client) gets with this worker's own credentials.
    ray_cli = str(Path(sys.executable).parent / "ray")
    try:
        done = subprocess.run([ray_cli, "status", "--address", government_gcs], capture_output=True, text=True,
                              timeout=GCS_TIMEOUT_S)
        said, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as stalled:  # Ray's GCS client retries a refused token
        said, code = f"{stalled.stdout or ''}{stalled.stderr or ''}", None
    said = said if isinstance(said, str) else said.decode(errors="replace")
    results["gcs"] = {"returncode": code, "refused_token": "Unauthenticated" in said or "InvalidAuthToken" in said,
                      "listed_nodes": "Active:" in said}
    for name, method, path in DASHBOARD_ATTEMPTS:
        for credential, header in (("commercial_token", f"Bearer {token}"), ("none", None)):
            request = urllib.request.Request(
                government_dashboard + path, method=method,
                data=json.dumps({"entrypoint": "cat /etc/passwd"}).encode() if method == "POST" else None,
                headers={"Content-Type": "application/json", **({"Authorization": header} if header else {})})
            try:
                with urllib.request.urlopen(request, timeout=15) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError as err:
                status = f"unreachable: {err}"
            results[f"dashboard_{name}_{credential}"] = status
    return results


def main(commercial_gcs: str, government_gcs: str, government_dashboard: str, targets: str = "{}") -> None:
    ray.init(address=commercial_gcs, namespace="fabriek-probe", log_to_driver=False,
             logging_level="ERROR", configure_logging=False)
    print(json.dumps(ray.get(attack.remote(government_gcs, government_dashboard, json.loads(targets)),
                             timeout=180)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
    sys.stdout.flush()
    os._exit(0)
