"""``fabriek power``: talk to the power governors of a running platform's domains.

Each isolation domain runs in a Ray cluster of its own, with a governor of its own. A
process can be the driver of one Ray cluster only, and a driver holds that cluster's token,
so each call runs in a short-lived process of its own (``python -m serving.power.client``)
that is given one domain's address and token file and nothing else; it joins that cluster
as a driver, calls the governor's deployment handle and prints the answer as JSON. Nothing
is imported from the engines.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time

from serving.config.cluster_layout import DomainCluster
from serving.config.energy_specs import GOVERNOR_DEPLOYMENT, POWER_APP
from serving.config.home import RAY_TOKEN_PATH

CALL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 3.0


class GovernorUnreachable(RuntimeError):
    """No platform, or one without its power governor, at the address."""


def governor(address: str):
    """A handle to the governor of the platform whose Ray cluster is at ``address``.

    Raises:
        GovernorUnreachable: no cluster there, or it runs no power governor.
    """
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or RAY_TOKEN_PATH.is_file()):
        # Ray asks for its token by itself only of clusters it finds on its own, not at an
        # explicit address; a local `fabriek serve` made one (Ray 2.60's default).
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray
    from ray import serve

    print(f"connecting to the Ray cluster at {address} ...", file=sys.stderr, flush=True)
    if address != "auto":
        _reachable(address)  # Ray itself retries an address that does not answer for minutes
    try:
        # Ray prints its own start-up banner and warnings; a command's output is its answer.
        with contextlib.redirect_stderr(io.StringIO()):
            ray.init(address=address, namespace="fabriek", logging_level=logging.ERROR,
                     log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise GovernorUnreachable(f"no fabriek platform at {address}: {err}") from None
    try:
        return serve.get_deployment_handle(GOVERNOR_DEPLOYMENT, app_name=POWER_APP)
    except Exception as err:
        raise GovernorUnreachable(f"the platform at {address} runs no power governor "
                                  f"(Serve application {POWER_APP}): {err}") from None


def _reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise GovernorUnreachable(f"no Ray cluster answers at {address} ({err})") from None


def call(handle, method: str, *args, **kwargs):
    """Call the governor and wait for its answer."""
    return getattr(handle, method).remote(*args, **kwargs).result(timeout_s=CALL_TIMEOUT_S)


def call_domain(cluster: DomainCluster, method: str, *args):
    """Call the governor of one domain's cluster, from a process given only its token.

    Raises:
        GovernorUnreachable: the cluster or its governor does not answer.
        ValueError: the governor refused the call (its message).
    """
    environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    environment.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.token_file))
    done = subprocess.run([sys.executable, "-m", "serving.power.client", cluster.gcs_address(), method,
                           json.dumps(args)], env=environment, capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S + 60)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    message = (done.stderr.strip().splitlines() or ["no answer"])[-1]
    if done.returncode == 2:
        raise ValueError(message)
    raise GovernorUnreachable(f"{cluster.domain} domain: {message}")


def _main(address: str, method: str, args_json: str) -> int:
    """One call in a process of its own: the answer as JSON on stdout; exit 2 when the
    governor refused it (ValueError), 1 when nothing answered."""
    try:
        handle = governor(address)
        answer = call(handle, method, *json.loads(args_json))
    except GovernorUnreachable as err:
        print(err, file=sys.stderr)
        return 1
    except ValueError as err:  # the governor's refusal, raised here by Ray
        print(str(err).strip().splitlines()[-1], file=sys.stderr)
        return 2
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    code = _main(*sys.argv[1:4])
    sys.stdout.flush()
    os._exit(code)  # a Ray driver's teardown adds seconds and nothing else
