"""The token-path benchmark's pure parts (loadtests/bench_token_path.py): its fast-engine
config, the numbers it computes from stream timings and CPU seconds, and its plot. No server."""

from __future__ import annotations

import json

import pytest

from loadtests import bench_token_path as bench
from loadtests.process_cpu import role_of
from serving.config import load_config


def test_fast_engine_config_is_a_valid_config_with_the_dummy_engine(tmp_path):
    path = bench.fast_engine_config(tmp_path, layers=3, max_num_seqs=256, core=1)
    assert path.parent == tmp_path
    config = load_config(path)  # with vLLM's and Ray's checks: they accept the engine arguments
    (pool,) = config.pools
    model = config.model(pool.models[0])
    assert model.engine_args["load_format"] == "dummy"
    assert model.engine_args["hf_overrides"] == {"num_hidden_layers": 3}
    assert pool.engine_args["max_num_seqs"] == 256
    assert pool.deployment["max_ongoing_requests"] >= 300
    assert pool.admission.max_running == 256
    assert config.ingress.deployment["max_ongoing_requests"] >= 300
    assert pool.cpu_threads_bind == "1" and config.local.system_cpus == "1"
    assert all(spec.pools == [pool.name] for spec in config.classes.values())
    assert str(tmp_path) in str(config.auth.key_file)


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def delta(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def test_content_events_times_each_event_by_the_chunk_that_completed_it():
    stream = sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, delta("a"), delta("b"),
                 {"choices": [], "usage": {"completion_tokens": 2}})
    cut = stream.index(b"\"b\"")  # the second token's event split over two chunks
    times, tokens = bench.content_events([(1.0, stream[:cut]), (2.0, stream[cut:])])
    assert times == [1.0, 2.0] and tokens == 2


def test_phase_stats_from_synthetic_timings():
    records = [{"started": 0.0, "times": [0.1, 0.2, 0.3], "tokens": 3},
               {"started": 1.0, "times": [1.3, 1.5], "tokens": 4},  # two tokens per event
               {"started": 2.0, "error": "HTTP 503"}]
    stats = bench.phase_stats(records, wall_s=2.0)
    assert stats["requests"] == 2 and stats["errors"] == 1 and stats["output_tokens"] == 7
    assert stats["tokens_per_s"] == pytest.approx(3.5)
    assert stats["ttft_p50_ms"] == pytest.approx(200)  # median of 100 and 300
    assert stats["ttft_p99_ms"] == pytest.approx(300)
    # gaps 100 ms, 100 ms (one token each), 200 ms over 2 tokens per event: 100 ms per token
    assert stats["itl_p50_ms"] == pytest.approx(100) and stats["itl_p99_ms"] == pytest.approx(100)
    assert stats["itl_mean_ms"] == pytest.approx(100)
    assert stats["tokens_per_event"] == pytest.approx(7 / 5)


@pytest.mark.parametrize(("command", "engine"), [
    (["VLLM::EngineCore"], True),
    (["VLLM::Worker_TP0"], True),
    (["ray::ServeReplica:government:government--smollm2-135m-instruct"], False),
    (["ray::ProxyActor"], False),
    (["/usr/sbin/haproxy", "-f", "cfg"], False),
    (["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"], False),
])
def test_engine_roles_are_vllm_engine_core_and_workers_only(command, engine):
    assert bench.is_engine_role(role_of(command, command[0])) is engine


def test_cpu_per_1k_splits_engine_from_platform():
    roles = {"VLLM::EngineCore": 4.0, "replica government--m": 1.0, "haproxy": 0.5, "raylet": 0.5}
    cpu = bench.cpu_per_1k(roles, output_tokens=2000)
    assert cpu["engine_cpu_s_per_1k"] == pytest.approx(2.0)
    assert cpu["platform_cpu_s_per_1k"] == pytest.approx(1.0)
    assert list(cpu["platform_by_role_per_1k"]) == ["replica government--m", "haproxy", "raylet"]


def phase(streams: int, tokens_per_s: float, platform: float, roles: dict[str, float] | None = None) -> dict:
    return {"streams": streams, "tokens_per_s": tokens_per_s, "ttft_p50_ms": 10.0, "ttft_p99_ms": 20.0,
            "itl_p50_ms": 5.0, "itl_p99_ms": 9.0, "engine_cpu_s_per_1k": 1.0, "platform_cpu_s_per_1k": platform,
            "client_cores": 0.1, "platform_by_role_per_1k": roles or {"python": platform}}


def synthetic_runs() -> list[dict]:
    runs = []
    for round_, speed in ((0, 1.0), (1, 2.0)):  # the machine twice as fast in round 1
        runs.append({"server": "vllm", "round": round_,
                     "phases": [phase(1, 100 * speed, 0.5), phase(16, 1000 * speed, 0.2)]})
        runs.append({"server": "fabriek", "round": round_,
                     "phases": [phase(1, 90 * speed, 1.0, {"haproxy": 0.4, "replica x": 0.6}),
                                phase(16, 1000 * speed, 0.3, {"haproxy": 0.1, "replica x": 0.2})]})
    return runs


def test_ratios_pair_each_round_and_take_the_geometric_mean():
    ratios = bench.paired_ratios(synthetic_runs())
    assert ratios["1"]["tokens_per_s"] == pytest.approx(0.9)
    assert ratios["16"]["tokens_per_s"] == pytest.approx(1.0)
    assert ratios["1"]["platform_cpu_s_per_1k"] == pytest.approx(2.0)
    assert ratios["16"]["platform_cpu_s_per_1k"] == pytest.approx(1.5)


def test_disturbed_phases_are_left_out_of_summary_and_ratios():
    runs = synthetic_runs()
    runs[2]["phases"][0]["outside_cores"] = 1.2  # someone's tests ran beside round 1's vLLM at 1 stream
    summary = bench.summarize(runs)
    assert summary["vllm"]["1"]["tokens_per_s"] == pytest.approx(100)
    assert summary["vllm"]["1"]["disturbed_rounds_left_out"] == 1 and not summary["vllm"]["1"]["disturbed"]
    ratios = bench.paired_ratios(runs)
    assert ratios["1"]["pairs"] == 1 and ratios["16"]["pairs"] == 2
    runs[0]["phases"][0]["outside_cores"] = 0.5  # and round 0's: all rounds are kept, and flagged
    entry = bench.summarize(runs)["vllm"]["1"]
    assert entry["disturbed"] and entry["rounds"] == 2 and entry["tokens_per_s"] == pytest.approx(150)
    assert bench.paired_ratios(runs)["1"]["pairs"] == 2


def test_summary_is_the_mean_over_rounds():
    summary = bench.summarize(synthetic_runs())
    assert summary["vllm"]["1"]["tokens_per_s"] == pytest.approx(150)
    assert summary["fabriek"]["16"]["rounds"] == 2
    assert list(summary["fabriek"]["1"]["platform_by_role_per_1k"]) == ["replica x", "haproxy"]


def test_plot_writes_a_png(tmp_path):
    runs = synthetic_runs()
    report = {"args": {"layers": 2, "max_tokens": 128}, "machine": {"cpu_count": 2},
              "summary": bench.summarize(runs), "ratios": bench.paired_ratios(runs)}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(report))
    out = tmp_path / "docs" / "token-path.png"
    bench.main(["--plot-only", str(results), "--plot", str(out)])
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
