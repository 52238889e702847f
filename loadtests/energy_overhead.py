"""What metering costs the engine replica: CPU time per request finish and per timer tick.

The engine replica closes a meter interval on every tick (``energy.sample_interval_s``) and
whenever a request finishes (``serving.engine.energy_accountant``). Each close reads the
counters, reads vLLM's state of every running request and divides the interval. This times
those closes in one process with what a CPU pool uses: a RAPL package counter (a powercap
tree in a temporary directory: the build machines have none), the engine's CPU share
(``ProcessCpuShare``, psutil on this process and its children), and vLLM's real
``RequestState`` objects for N running requests, read by ``vllm_progress``.

    .venv/bin/python loadtests/energy_overhead.py --running 16,64,256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.engine.energy_accountant import EnergyAccountant, vllm_progress  # noqa: E402
from serving.engine.energy_meter import EnergyMeter, ProcessCpuShare, rapl_counters  # noqa: E402


def request_states(n: int) -> dict:
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.output_processor import RequestState

    states = {}
    for i in range(n):
        rid = f"fabriek-{i:032x}"
        state = RequestState(request_id=f"chatcmpl-{rid}-00000000", external_req_id=f"chatcmpl-{rid}",
                             parent_req=None, request_index=0, lora_request=None,
                             output_kind=RequestOutputKind.DELTA, prompt=None, prompt_token_ids=list(range(200)),
                             prompt_embeds=None, logprobs_processor=None, detokenizer=None, max_tokens_param=512,
                             arrival_time=0.0, queue=None, log_stats=True, stream_interval=1)
        state.is_prefilling = False
        states[state.request_id] = state
    return states


def measure(running: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        zone = Path(root) / "intel-rapl:0"
        zone.mkdir()
        (zone / "name").write_text("package-0\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
        (zone / "energy_uj").write_text("0\n")
        states = request_states(running)
        holder = type("AsyncLLM", (), {})()
        holder.output_processor = type("OutputProcessor", (), {"request_states": states})()
        accountant = EnergyAccountant(EnergyMeter(rapl_counters(Path(root)), ProcessCpuShare()),
                                      vllm_progress(holder), 0.1)
        uj = 0
        ids = [s.external_req_id.removeprefix("chatcmpl-") for s in states.values()]

        def advance():
            nonlocal uj
            uj += 1_000_000
            (zone / "energy_uj").write_text(f"{uj}\n")
            for state in states.values():
                state.stats.num_generation_tokens += 1

        spent_finish = spent_tick = 0.0
        for i in range(rounds):
            advance()
            started = time.process_time()
            accountant.close()
            spent_tick += time.process_time() - started
            advance()
            started = time.process_time()
            accountant.finish(ids[i % running], 200, i)
            spent_finish += time.process_time() - started
        return {"running": running, "rounds": rounds, "cpu_us_per_tick": spent_tick / rounds * 1e6,
                "cpu_us_per_finish": spent_finish / rounds * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--running", default="16,64,256", help="running requests, comma separated")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = [measure(int(n), args.rounds) for n in args.running.split(",")]
    print("| running requests | CPU us per tick | CPU us per request finish |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['running']} | {r['cpu_us_per_tick']:.0f} | {r['cpu_us_per_finish']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
