"""Fixtures shared by the whole suite: the one fabriek server per test session."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from loadtests.front_doors import free_port, free_ports  # one definition: skips the ports Ray takes
from serving.config.cluster_layout import DomainCluster, local_clusters

# Start-up of the default model's two pools on a 2-core CPU machine takes ~1.5 min; allow
# slack for a loaded CI machine.
SERVER_START_TIMEOUT_S = 600
DEMO_TENANTS = ("gov-demo", "pilot-demo")
MODEL_ID = "smollm2-135m-instruct"
# Commercial test tenants with small quotas, one limit each (tests/serving/test_e2e_admission.py).
QUOTA_TENANTS = {
    "quota-rpm": {"requests_per_minute": 2},
    "quota-tpm": {"tokens_per_minute": 400},
    "quota-conc": {"max_concurrent_requests": 1},
    "quota-caps": {"max_tokens": 16, "max_prompt_tokens": 64},
    "quota-grpc": {"requests_per_minute": 1},
    # tests/serving/test_e2e_hostile.py: refusals count; sequences count as concurrent requests.
    "quota-refusals": {"requests_per_minute": 3},
    "quota-conc2": {"max_concurrent_requests": 2},
    # tests/serving/test_e2e_fuzz.py: answers capped so that fuzzed requests finish fast.
    "fuzz": {"max_tokens": 16, "max_prompt_tokens": 256},
}
# Government test tenants of the embedding model (tests/serving/test_e2e_apps.py).
EMBEDDING_MODEL_ID = "multilingual-e5-small"
GOV_QUOTA_TENANTS = {"gov-embed-tpm": {"tokens_per_minute": 200}}
# A government tenant with LoRA adapters of its own (tests/serving/test_e2e_adapters.py):
# one made by tests/lora_adapter.py, one whose directory does not exist (it never loads).
ADAPTER_TENANT = "gov-ministry"
ADAPTER_ID = "gov-ministry-permits"
UNLOADABLE_ADAPTER_ID = "gov-ministry-unloadable"
# The package power of the session's energy counter (tests/serving/test_e2e_energy.py).
PACKAGE_WATTS = 50.0


class PowercapPackage:
    """A RAPL package counter in the layout of Linux's powercap tree, advanced by a thread at a
    fixed power. This machine (a VM) exposes no RAPL; the engines read this one exactly as
    they read /sys/class/powercap, so metering, attribution and power caps run end to end."""

    def __init__(self, root: Path, watts: float):
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text("262143328850\n")
        self.watts = watts
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._write()
        threading.Thread(target=self._run, daemon=True).start()

    def joules(self) -> float:
        return (time.monotonic() - self._started) * self.watts

    def _write(self) -> None:
        tmp = self.zone / "energy_uj.tmp"
        tmp.write_text(f"{int(self.joules() * 1e6) % 262143328850}\n")
        os.replace(tmp, self.zone / "energy_uj")  # a reader never sees half a number

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._write()

    def stop(self) -> None:
        self._stop.set()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with pytest's status once every report is written, skipping the interpreter's
    teardown. This process has been a Ray driver several times over (tests/serving/
    frontdoor, test_e2e_grpc), and holds gRPC servers, torch and Triton's interpreter; one CI
    run in two crashed with SIGSEGV in that teardown after all 1153 tests had passed, which
    `make test` reports as a failure. Nothing is left to run or flush by then."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None and not hasattr(sys, "ps1"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop the session's server run after all the others, whatever their file;
    tests that need the machine's memory without it run after those."""
    items.sort(key=lambda item: 2 if item.get_closest_marker("after_server") is not None
               else 1 if item.get_closest_marker("stops_server") is not None else 0)


@dataclass
class FabriekServer:
    """A `fabriek serve` process and what it printed. Each isolation domain is a Ray cluster
    of its own, with ports of its own (``clusters``)."""

    process: subprocess.Popen
    http_port: int  # the first domain's; see ``clusters`` for every domain's ports
    config_path: Path
    ledger_url_template: str  # with {domain}
    keys: dict[str, str]  # tenant id -> API key, made by `fabriek keys create`
    clusters: dict[str, DomainCluster] = field(default_factory=dict)  # domain -> its Ray cluster
    domain_of: dict[str, str] = field(default_factory=dict)  # tenant id -> its isolation domain
    adapter_dir: Path | None = None  # ADAPTER_ID's directory (tests/lora_adapter.py)
    lines: list[str] = field(default_factory=list)
    is_ready: bool = False

    def cluster(self, tenant_or_domain: str = "gov-demo") -> DomainCluster:
        """The Ray cluster of a tenant's (or a named) domain."""
        return self.clusters[self.domain_of.get(tenant_or_domain, tenant_or_domain)]

    def root_url(self, tenant_or_domain: str = "gov-demo") -> str:
        """The HTTP address of a domain before its prefix."""
        return f"http://127.0.0.1:{self.cluster(tenant_or_domain).http_port}"

    def base_url(self, tenant_or_domain: str = "gov-demo") -> str:
        """The front door of a tenant's (or a named) domain: ``http://...:PORT/<domain>``."""
        return f"{self.root_url(tenant_or_domain)}/{self.cluster(tenant_or_domain).domain}"

    def grpc_target(self, tenant_or_domain: str = "gov-demo") -> str:
        """The gRPC address of a tenant's (or a named) domain."""
        return f"127.0.0.1:{self.cluster(tenant_or_domain).grpc_port}"

    def metrics_url(self, tenant_or_domain: str = "gov-demo") -> str:
        """The Prometheus endpoint of a tenant's (or a named) domain's Ray cluster."""
        return f"http://127.0.0.1:{self.cluster(tenant_or_domain).metrics_export_port}/metrics"

    def ledger_url(self, tenant_or_domain: str = "gov-demo") -> str:
        """The usage ledger of a tenant's (or a named) domain."""
        return self.ledger_url_template.replace("{domain}", self.domain_of.get(tenant_or_domain, tenant_or_domain))

    def grpc_metadata(self, tenant: str, key: str | None = None) -> list[tuple[str, str]]:
        """``authorization`` with the tenant's key (or ``key``) and the ``application``
        (the tenant's domain) that routes a gRPC call to its domain's front door."""
        return [("authorization", f"Bearer {key or self.keys[tenant]}"), ("application", self.domain_of[tenant])]

    def ray_address(self, domain: str = "government") -> str:
        """The GCS address of a domain's Ray head, as `fabriek serve` printed it."""
        [line] = [line for line in self.lines
                  if line.startswith("fabriek: Ray address:") and f"({domain} domain;" in line]
        return line.split(":", 2)[2].split()[0]

    def ray_logs_dir(self, domain: str = "government") -> Path:
        """A domain's Ray session log directory, as `fabriek serve` printed it."""
        [line] = [line for line in self.lines
                  if line.startswith("fabriek: Ray logs:") and line.rstrip().endswith(f"({domain} domain)")]
        return Path(line.split(":", 2)[2].strip().rsplit(" (", 1)[0])

    def cli(self, *args: str) -> str:
        """Run a `fabriek` command against this server's config; return its stdout."""
        from serving.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*args, "--config", str(self.config_path)]) == 0
        return out.getvalue()

    def output(self, last: int = 60) -> str:
        return "".join(self.lines[-last:])


class DomainStubs:
    """``InferenceServiceStub`` over one channel per domain: each call goes to the door of the
    domain its ``application`` metadata names, as each domain's clients are configured with
    their own domain's address (another name, or none: the first domain's door)."""

    def __init__(self, server: FabriekServer):
        import grpc

        from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub

        self._channels = {d: grpc.insecure_channel(server.grpc_target(d)) for d in server.clusters}
        self._stubs = {d: InferenceServiceStub(c) for d, c in self._channels.items()}
        self._first = next(iter(self._stubs))

    def wait_until_ready(self, timeout_s: float) -> "DomainStubs":
        import grpc

        for channel in self._channels.values():
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return self

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __getattr__(self, method: str):
        return _RoutedMethod(self, method)

    def pick(self, method: str, metadata) -> object:
        application = dict(metadata or ()).get("application")
        return getattr(self._stubs.get(application, self._stubs[self._first]), method)


@dataclass
class _RoutedMethod:
    stubs: DomainStubs
    method: str

    def __call__(self, request, **kwargs):
        return self.stubs.pick(self.method, kwargs.get("metadata"))(request, **kwargs)

    def with_call(self, request, **kwargs):
        return self.stubs.pick(self.method, kwargs.get("metadata")).with_call(request, **kwargs)

    def future(self, request, **kwargs):
        return self.stubs.pick(self.method, kwargs.get("metadata")).future(request, **kwargs)


def _collect_output(server: FabriekServer, ready: threading.Event) -> None:
    for line in server.process.stdout:
        server.lines.append(line)
        if line.strip() == "fabriek ready":
            server.is_ready = True
            ready.set()
    ready.set()  # the process ended; the waiter checks why


def start_fabriek(config_path: Path, environment: dict) -> tuple[subprocess.Popen, list[str], bool]:
    """`fabriek serve --config config_path` in a session of its own, waited for until it says
    `fabriek ready`, ends, or SERVER_START_TIMEOUT_S passes: the process, what it printed
    (still growing) and whether it is ready."""
    process = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
                               start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def collect():
        for line in process.stdout:
            lines.append(line)
            if line.strip() == "fabriek ready":
                ready.set()

    threading.Thread(target=collect, daemon=True).start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not ready.wait(1) and process.poll() is None and time.monotonic() < deadline:
        pass
    return process, lines, ready.is_set()


@pytest.fixture(scope="module")
def python_reachable_by_other_users():
    """Lets other users pass through the directories above this Python (search only, no
    listing), as `local.run_as` needs of a host; put back afterwards. Here Python comes from
    pyenv under /root (0700); on a facility host it lies under /usr or /opt."""
    closed = [d for d in Path(sys.executable).resolve().parents if not os.stat(d).st_mode & 0o001]
    modes = {d: os.stat(d).st_mode & 0o7777 for d in closed}
    for directory, mode in modes.items():
        os.chmod(directory, mode | 0o001)
    try:
        yield
    finally:
        for directory, mode in modes.items():
            os.chmod(directory, mode)


@pytest.fixture(scope="session")
def otlp_collector():
    """Where the session's server sends its traces (tests/serving/test_e2e_tracing.py)."""
    from tests.otlp_collector import OtlpCollector

    collector = OtlpCollector()
    yield collector
    collector.stop()


@pytest.fixture(scope="session")
def fabriek_server(tmp_path_factory, otlp_collector) -> FabriekServer:
    """`fabriek serve` with the shipped CPU config, started once per session.

    Every port is a free one and the key file and salt secret are the session's own, so the
    suite runs beside a `make serve` on the same machine. Both demo tenants get a key from
    the `fabriek keys create` code path before the server starts. Tracing is on, by the
    standard OTEL_* variables, to the session's OTLP collector; spans leave every 0.2 s.
    """
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH
    from serving.engine.default_model import builtin_model_dir, builtin_models, prepare_builtin_model

    for name in builtin_models():
        prepare_builtin_model(name, show_progress=False)
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    # Each domain's cluster takes each port + its index: one free block, two ports a field.
    first = free_ports(14)
    config["http"]["port"], config["grpc"]["port"] = first, first + 2
    config["local"].update(gcs_port=first + 4, dashboard_port=first + 6, metrics_export_port=first + 8)
    config["serve"].update(haproxy_stats_port=first + 10, haproxy_metrics_port=first + 12)
    # Ray Serve's replica and fallback proxy ports, apart from a `make serve`'s (30000-31999).
    config["local"]["serve_port_base"] = 32000
    home = tmp_path_factory.mktemp("config")
    # One key file, salt and ledger per isolation domain, as the config requires.
    config["auth"].update(key_file=str(home / "{domain}" / "api-keys.json"),
                          cache_salt_secret_file=str(home / "{domain}" / "cache-salt.secret"))
    for domain in ("government", "commercial"):
        (home / domain).mkdir()
    config["ledger"] = {"url": (ledger_url := f"sqlite:///{home / '{domain}' / 'usage.db'}")}
    # Each domain cluster's own Ray token, the session's (not those of a `make serve` here).
    config["local"]["ray_token_file"] = str(home / "{domain}" / "ray-token")
    package = PowercapPackage(home / "powercap", PACKAGE_WATTS)
    config["energy"] = {"powercap_root": str(home / "powercap"), "sample_interval_s": 0.5}
    # A standing grid connection limit that never binds (the cap metrics exist from the start).
    config["power_caps"] = [{"name": "grid-connection", "watts": "1MW", "scope": "platform"}]
    config["tenants"] += [{"id": tenant, "class": "commercial", "models": [MODEL_ID], "quota": quota}
                          for tenant, quota in QUOTA_TENANTS.items()]
    config["tenants"] += [{"id": tenant, "class": "government", "models": [EMBEDDING_MODEL_ID], "quota": quota}
                          for tenant, quota in GOV_QUOTA_TENANTS.items()]
    # The commercial class keeps its Responses (tests/serving/test_e2e_stored_responses.py);
    # the government class keeps none, as shipped.
    config["classes"]["commercial"]["store_responses"] = True
    from tests.lora_adapter import make_adapter

    adapter_dir = make_adapter(builtin_model_dir(MODEL_ID), home / "adapters" / "permits")
    config["tenants"].append({"id": ADAPTER_TENANT, "class": "government", "models": [MODEL_ID], "adapters": [
        {"id": ADAPTER_ID, "base": MODEL_ID, "source": str(adapter_dir)},
        {"id": UNLOADABLE_ADAPTER_ID, "base": MODEL_ID, "source": str(home / "adapters" / "missing")}]})
    config_path = home / "platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    server = FabriekServer(
        process=subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                         "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector.endpoint,
                                         "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "200",
                                         # Ray exports metrics every 10 s by default.
                                         "RAY_metrics_report_interval_ms": "2000"}),
        http_port=config["http"]["port"], config_path=config_path, ledger_url_template=ledger_url, keys={})
    from serving.config import load_config

    loaded = load_config(config_path)
    server.clusters = {c.domain: c for c in local_clusters(loaded)}
    server.domain_of = {t.id: loaded.domain_of(t.id).name for t in loaded.tenants}
    server.adapter_dir = adapter_dir
    for tenant in (*DEMO_TENANTS, *QUOTA_TENANTS, *GOV_QUOTA_TENANTS, ADAPTER_TENANT):
        server.keys[tenant] = server.cli("keys", "create", "--tenant", tenant).splitlines()[-1]
    ready = threading.Event()
    threading.Thread(target=_collect_output, args=(server, ready), daemon=True).start()
    started = time.monotonic()
    ready.wait(SERVER_START_TIMEOUT_S)
    if not server.is_ready:
        _kill_tree(server.process)
        pytest.fail(f"fabriek serve did not become ready in {time.monotonic() - started:.0f} s:\n"
                    f"{server.output()}")
    yield server
    if server.process.poll() is None:
        _kill_tree(server.process)
    package.stop()


def _kill_tree(process: subprocess.Popen) -> None:
    """Last resort after a failure: SIGKILL the server and everything it started."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)
