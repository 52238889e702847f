"""Energy end to end: the real `fabriek serve` meters its engines with a RAPL package counter
(a powercap tree the session advances at a fixed power, tests/conftest.py: this VM has no
RAPL), and every answer carries the joules its engine's meter gave it: as a header, an SSE
comment before [DONE], gRPC trailing metadata, in the usage ledger and `fabriek usage`. A
power cap set with `fabriek power cap` holds a pool's running limit down (its requests wait
for power, and the ledger says so) and leaves the other domain's pool alone."""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys
import time

import grpc
import httpx
import openai
import pytest

from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub
from tests.conftest import MODEL_ID
from tests.serving.test_e2e_hostile import finished_record

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "Name three Dutch rivers."}]
ENERGY = "x-fabriek-energy-j"


def client(server, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url(tenant)}/v1", api_key=server.keys[tenant], max_retries=0)


def test_a_whole_answer_carries_its_joules_and_the_ledger_has_the_same(fabriek_server):
    # A hostile client names another request's id for vLLM (its X-Request-Id header): the
    # engine still counts the work under the id fabriek gave the request, not the client's.
    claimed = "fabriek-" + "0" * 32
    raw = client(fabriek_server, "gov-demo").chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=24, temperature=0,
        extra_headers={"X-Request-Id": claimed, "x-fabriek-energy-j": "0"})
    joules = float(raw.headers[ENERGY])
    assert joules > 0
    assert raw.headers["x-fabriek-request-id"] != claimed
    record = finished_record(fabriek_server, "gov-demo", raw.headers["x-fabriek-request-id"])
    assert record.energy_j == pytest.approx(joules, rel=1e-5)
    assert raw.parse().usage.completion_tokens > 0


def test_a_stream_ends_with_its_joules_in_a_comment_the_sdk_skips(fabriek_server):
    body = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 16, "stream": True}
    with httpx.stream("POST", f"{fabriek_server.base_url('gov-demo')}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {fabriek_server.keys['gov-demo']}"}) as response:
        text = "".join(response.iter_text())
        request_id = response.headers["x-fabriek-request-id"]
    comment = re.search(rf"^: {ENERGY}=([0-9.e+-]+)\n\ndata: \[DONE\]\n\n$", text, re.MULTILINE)
    assert comment, text[-300:]
    record = finished_record(fabriek_server, "gov-demo", request_id)
    assert record.energy_j == pytest.approx(float(comment.group(1)), rel=1e-5)
    # The official client reads the same stream as ever.
    chunks = list(client(fabriek_server, "gov-demo").chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=8, stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)


def test_grpc_answers_carry_their_joules_as_trailing_metadata(fabriek_server):
    with grpc.insecure_channel(fabriek_server.grpc_target("pilot-demo")) as channel:
        grpc.channel_ready_future(channel).result(timeout=180)
        stub = InferenceServiceStub(channel)
        request = pb.ChatRequest(model=MODEL_ID, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Hallo!")],
                                 sampling=pb.SamplingParams(max_tokens=8))
        metadata = fabriek_server.grpc_metadata("pilot-demo")
        _, call = stub.Chat.with_call(request, metadata=metadata, timeout=60)
        assert float(dict(call.trailing_metadata())[ENERGY]) > 0
        stream = stub.ChatStream(request, metadata=metadata, timeout=60)
        assert list(stream)
        assert float(dict(stream.trailing_metadata())[ENERGY]) > 0


def test_usage_reports_watt_hours_per_tenant(fabriek_server):
    client(fabriek_server, "pilot-demo").chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=4)
    time.sleep(1)  # the ledger's group commit
    rows = [line for line in fabriek_server.cli("usage", "--tenant", "pilot-demo").splitlines()
            if line.startswith("pilot-demo") and " ok " in f" {line} "]
    assert rows and re.search(r"\d+\.\d{3}\*?$", rows[0].rstrip()), rows


def power(server, *args: str) -> str:
    """`fabriek power ...` against the server's domains' Ray clusters, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "serving.cli", "power", *args, "--config", str(server.config_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pool_limits(status: str) -> dict[str, int]:
    """POOL -> LIMIT from `fabriek power status`."""
    rows = re.findall(r"^(government|commercial)\s+\S+\s+\S+\s+\S+\s+(\d+)\s", status, re.MULTILINE)
    return {pool: int(limit) for pool, limit in rows}


def test_a_power_cap_holds_a_pools_running_limit_down_and_its_requests_wait_for_power(fabriek_server):
    status = power(fabriek_server, "status")
    assert "grid-connection" in status and pool_limits(status) == {"government": 64, "commercial": 64}
    # The commercial engine draws more than a milliwatt of the package whenever it runs at all.
    power(fabriek_server, "cap", "0.001W", "--scope", "pool:commercial", "--name", "e2e-curtailment",
          "--until", "23:59")
    pilot = client(fabriek_server, "pilot-demo")
    try:
        deadline = time.monotonic() + 90
        while pool_limits(status := power(fabriek_server, "status")).get("commercial") != 1:
            assert time.monotonic() < deadline, status
            pilot.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=16)
        assert pool_limits(status)["government"] == 64  # the other domain keeps its limit
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: pilot.chat.completions.with_raw_response.create(
                model=MODEL_ID, messages=QUESTION, max_tokens=24), range(3)))
        records = [finished_record(fabriek_server, "pilot-demo", a.headers["x-fabriek-request-id"]) for a in answers]
        assert all(r.status == "ok" for r in records)
        assert sum(r.reason == "queued_for_power" for r in records) >= 2, [(r.reason, r.queue_ms) for r in records]
    finally:
        power(fabriek_server, "lift", "e2e-curtailment")
    deadline = time.monotonic() + 30
    while pool_limits(status := power(fabriek_server, "status")).get("commercial") != 64:
        assert time.monotonic() < deadline, status
        time.sleep(1)
