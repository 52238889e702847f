"""Energy per request on a real GPU, measured the way fabriek's engines will (issue 18).

A device check, not a benchmark of vLLM: it runs a decode workload written in plain torch
(no vLLM on the device machine), meters it with fabriek's own ``EnergyMeter`` over the GPU's
NVML total-energy counter, and divides each interval's joules among the requests that ran
in it with ``routers.energy_attribution.attribute``, as the engine replicas do. It follows
ML.ENERGY's method: a steady-state window, counter deltas (no power integration), energy
per output token and per response.

The workload: a decoder-like stack sized like a ~1B model (hidden 2048, MLP 8192 gated,
16 layers, 16 heads, vocabulary 32,000, bf16, random weights) with a KV cache per request.
Continuous batching in miniature: ``B`` slots, each holding one synthetic request with a
random prompt length (prefilled by one forward over its prompt, writing its KV cache) and a
random output length (one decode step per token, attention over the cached context); each
step decodes one token for all ``B`` requests; when one finishes, the next request is
prefilled into its slot before the next step, so ``B`` stay running.

Per batch size (``--batch-sizes``, default 1,8,32,128):
  1. the prefill weight, measured: time per prefill token (a prefill-only run of the mean
     prompt length) over time per decode token (decode-only steps of the batch at the mean
     context), each the median of CUDA-event-timed repeats;
  2. a warm-up (``--warmup`` s), then a steady window (``--seconds`` s). In the window the
     meter is sampled every ``--interval`` s (after ``torch.cuda.synchronize``, so the work
     recorded for an interval is the work the GPU did in it); each interval's joules are
     attributed by each request's prefilled and decoded tokens in it;
  3. a separate pair of counter reads around the window gives NVML's total: the requests'
     attributed joules plus the idle joules must come within 2% of it (PASS/FAIL).

Reports per batch size: NVML joules, attributed + idle joules and their relative
difference, joules per output token (window energy over output tokens), joules per response
(mean attributed joules of the responses that ran whole inside the window), mean power,
tokens/s. Writes all numbers and the machine to ``--out`` (default
``$OUT/energy-device-check.json`` where ``$OUT`` is set, else ``./energy-device-check.json``)
and prints a markdown table.

Exit status: 0 all PASS; 1 a FAIL; 2 not measurable here (no ``pynvml``, no CUDA, no NVML
energy counter). ``--dry-run`` runs the same scheduling, bookkeeping and attribution on
the CPU with a tiny model and no meter: energy is reported as not measured (null).

Usage (on the device machine, from the repository root; about 2 minutes):
    python3 loadtests/energy_device_check.py [--batch-sizes 1,8,32,128] [--seconds 20]
    .venv/bin/python loadtests/energy_device_check.py --dry-run --seconds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from routers.energy_attribution import IntervalWork, attribute  # noqa: E402
from serving.engine.energy_meter import EnergyCounter, EnergyMeter, nvml_counters  # noqa: E402

TOLERANCE = 0.02  # attributed + idle against NVML's window total

GPU_MODEL = {"hidden": 2048, "mlp": 8192, "layers": 16, "heads": 16, "vocab": 32000}
TINY_MODEL = {"hidden": 64, "mlp": 128, "layers": 2, "heads": 4, "vocab": 256}
GPU_LENGTHS = {"prompt_len": (64, 1024), "output_len": (32, 512)}
TINY_LENGTHS = {"prompt_len": (4, 32), "output_len": (2, 16)}


# ----------------------------------------------------------------------------- bookkeeping


class Engine(Protocol):
    """What the scheduler drives: one forward per prompt, one decode step per token for all
    slots at once."""

    def reset(self, batch_size: int) -> None: ...

    def prefill(self, slot: int, n_tokens: int) -> None: ...

    def decode(self) -> None: ...

    def sync(self) -> None: ...


@dataclass
class Request:
    rid: str
    prompt_len: int
    output_len: int
    decoded: int = 0
    started_in_window: bool = False
    finished_in_window: bool = False


@dataclass(frozen=True)
class StepWork:
    """One scheduler step: tokens per request, and the requests that finished in it."""

    prefilled: dict[str, int]
    decoded: dict[str, int]
    finished: tuple[Request, ...]


class Scheduler:
    """Continuous batching in miniature: ``batch_size`` slots, each refilled with the next
    synthetic request (random prompt and output lengths) as soon as its request finishes."""

    def __init__(self, batch_size: int, prompt_len: tuple[int, int], output_len: tuple[int, int], seed: int = 0):
        self.batch_size = batch_size
        self.prompt_len = prompt_len
        self.output_len = output_len
        self._rng = random.Random(seed)
        self._slots: list[Request | None] = [None] * batch_size
        self._next = 0
        self.in_window = False  # requests started while set are whole-window candidates

    @property
    def running(self) -> list[Request]:
        return [r for r in self._slots if r is not None]

    def _new_request(self) -> Request:
        self._next += 1
        return Request(f"r{self._next}", self._rng.randint(*self.prompt_len), self._rng.randint(*self.output_len),
                       started_in_window=self.in_window)

    def step(self, engine: Engine) -> StepWork:
        prefilled: dict[str, int] = {}
        for slot, request in enumerate(self._slots):
            if request is None:
                request = self._slots[slot] = self._new_request()
                engine.prefill(slot, request.prompt_len)
                prefilled[request.rid] = request.prompt_len
        engine.decode()
        decoded, finished = {}, []
        for slot, request in enumerate(self._slots):
            request.decoded += 1
            decoded[request.rid] = 1
            if request.decoded >= request.output_len:
                request.finished_in_window = self.in_window
                finished.append(request)
                self._slots[slot] = None
        return StepWork(prefilled, decoded, tuple(finished))


class Book:
    """Per interval: each request's work; at the interval's end its joules attributed.

    Args:
        prefill_weight: time per prefill token over time per decode token.
    """

    def __init__(self, prefill_weight: float):
        self.prefill_weight = prefill_weight
        self._work: dict[str, list[int]] = {}
        self.request_joules: dict[str, float] = {}
        self.idle_joules = 0.0
        self.metered_joules = 0.0  # what the meter reported, interval by interval
        self.measured = True
        self.intervals = 0
        self.idle_intervals = 0
        self.prefilled_tokens = 0
        self.decoded_tokens = 0
        self.request_tokens: dict[str, list[int]] = {}  # rid -> [prefilled, decoded] in the window

    def record(self, work: StepWork) -> None:
        for rid, n in work.prefilled.items():
            self._work.setdefault(rid, [0, 0])[0] += n
        for rid, n in work.decoded.items():
            self._work.setdefault(rid, [0, 0])[1] += n

    def close(self, joules: float | None) -> None:
        """End the interval with the meter's joules for it (None: not measured)."""
        work = {rid: IntervalWork(p, d) for rid, (p, d) in self._work.items()}
        self._work = {}
        self.intervals += 1
        for rid, w in work.items():
            tokens = self.request_tokens.setdefault(rid, [0, 0])
            tokens[0] += w.prefilled
            tokens[1] += w.decoded
            self.prefilled_tokens += w.prefilled
            self.decoded_tokens += w.decoded
        if not work:
            self.idle_intervals += 1
        if joules is None:
            self.measured = False
            # The attribution's code path still runs, over a unit of "energy" per interval.
            attribute(1.0, work, self.prefill_weight)
            return
        self.metered_joules += joules
        result = attribute(joules, work, self.prefill_weight)
        for rid, j in result.requests.items():
            self.request_joules[rid] = self.request_joules.get(rid, 0.0) + j
        self.idle_joules += result.idle_joules

    @property
    def attributed_joules(self) -> float | None:
        return sum(self.request_joules.values()) if self.measured else None


@dataclass
class WindowResult:
    batch_size: int
    prefill_weight: float
    seconds: float
    steps: int
    intervals: int
    idle_intervals: int
    prompt_tokens: int
    output_tokens: int
    responses_finished: int
    responses_whole: int
    mean_output_tokens_whole: float | None
    nvml_joules: float | None
    attributed_joules: float | None
    idle_joules: float | None
    attributed_plus_idle_joules: float | None
    relative_difference: float | None
    check: str | None
    joules_per_output_token: float | None
    joules_per_response_mean: float | None
    mean_power_w: float | None
    tokens_per_s: float
    timing: dict = field(default_factory=dict)


def _raw(counters: Sequence[EnergyCounter]) -> list[float]:
    return [c.read_joules() for c in counters]


def run_window(engine: Engine, scheduler: Scheduler, *, prefill_weight: float, seconds: float,
               interval_s: float, counters: Sequence[EnergyCounter] | None,
               clock: Callable[[], float] = time.perf_counter, warmup_s: float = 0.0,
               timing: dict | None = None) -> WindowResult:
    """Warm up, then meter one steady window of ``seconds``; ``counters`` None: not measured."""
    start = clock()
    while clock() - start < warmup_s:
        scheduler.step(engine)
    engine.sync()
    meter = EnergyMeter(counters) if counters is not None else None  # its first reads: now
    before = _raw(counters) if counters is not None else None
    book = Book(prefill_weight)
    scheduler.in_window = True
    finished: list[Request] = []
    steps = 0
    start = last = clock()
    while True:
        work = scheduler.step(engine)
        steps += 1
        book.record(work)
        finished.extend(work.finished)
        now = clock()
        if now - last >= interval_s or now - start >= seconds:
            engine.sync()  # the GPU has done the interval's work before its counter is read
            book.close(meter.sample() if meter is not None else None)
            now = last = clock()
            if now - start >= seconds:
                break
    after = _raw(counters) if counters is not None else None
    elapsed = clock() - start
    scheduler.in_window = False

    whole = [r for r in finished if r.started_in_window and r.finished_in_window]
    nvml = None
    if counters is not None:
        nvml = sum(c.delta(b, a) for c, b, a in zip(counters, before, after))
    attributed = book.attributed_joules
    total = attributed + book.idle_joules if attributed is not None else None
    diff = check = None
    if total is not None:
        diff = abs(total - nvml) / nvml if nvml > 0 else None  # a counter that did not move: FAIL
        check = "PASS" if diff is not None and diff <= TOLERANCE else "FAIL"
    per_response = ([book.request_joules.get(r.rid, 0.0) for r in whole] if book.measured else [])
    return WindowResult(
        batch_size=scheduler.batch_size, prefill_weight=prefill_weight, seconds=elapsed, steps=steps,
        intervals=book.intervals, idle_intervals=book.idle_intervals,
        prompt_tokens=book.prefilled_tokens, output_tokens=book.decoded_tokens,
        responses_finished=len(finished), responses_whole=len(whole),
        mean_output_tokens_whole=statistics.fmean(r.output_len for r in whole) if whole else None,
        nvml_joules=nvml, attributed_joules=attributed,
        idle_joules=book.idle_joules if book.measured else None,
        attributed_plus_idle_joules=total, relative_difference=diff, check=check,
        joules_per_output_token=nvml / book.decoded_tokens if nvml is not None and book.decoded_tokens else None,
        joules_per_response_mean=statistics.fmean(per_response) if per_response else None,
        mean_power_w=nvml / elapsed if nvml is not None and elapsed > 0 else None,
        tokens_per_s=book.decoded_tokens / elapsed if elapsed > 0 else 0.0,
        timing=timing or {})


# ----------------------------------------------------------------------------- the workload


class TorchDecoder:
    """A decoder-like stack with random weights and a per-slot KV cache (see the module doc)."""

    def __init__(self, *, hidden: int, mlp: int, layers: int, heads: int, vocab: int, max_context: int,
                 device: str, dtype: str, seed: int = 0):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.cuda = self.device.type == "cuda"
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.H, self.M, self.L, self.heads, self.V = hidden, mlp, layers, heads, vocab
        self.d = hidden // heads
        self.max_context = max_context
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

        def weight(rows: int, cols: int):
            return torch.randn(rows, cols, device=self.device, dtype=self.dtype, generator=self.gen) / math.sqrt(rows)

        with torch.inference_mode():
            self.embed = torch.randn(vocab, hidden, device=self.device, dtype=self.dtype, generator=self.gen)
            self.wqkv = [weight(hidden, 3 * hidden) for _ in range(layers)]
            self.wo = [weight(hidden, hidden) for _ in range(layers)]
            self.wgu = [weight(hidden, 2 * mlp) for _ in range(layers)]
            self.wd = [weight(mlp, hidden) for _ in range(layers)]
            self.norm = torch.ones(hidden, device=self.device, dtype=self.dtype)
            self.head = weight(hidden, vocab)
            self.positions = torch.arange(max_context, device=self.device)
        self.parameters = vocab * hidden * 2 + layers * (4 * hidden * hidden + 3 * hidden * mlp)
        self.B = 0

    def reset(self, batch_size: int) -> None:
        torch = self.torch
        self.k_cache = self.v_cache = None
        if self.cuda:
            torch.cuda.empty_cache()
        shape = (self.L, batch_size, self.heads, self.max_context, self.d)
        with torch.inference_mode():
            # Random, not zeros: masked positions hold finite values, and nothing runs on zeros.
            self.k_cache = torch.empty(shape, device=self.device, dtype=self.dtype).normal_(generator=self.gen)
            self.v_cache = torch.empty(shape, device=self.device, dtype=self.dtype).normal_(generator=self.gen)
            self.slots = torch.arange(batch_size, device=self.device)
            self.lens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
            self.tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.host_lens = [0] * batch_size
        self.B = batch_size

    def set_context(self, n: int) -> None:
        """Every slot at context ``n`` (for decode-only timing)."""
        with self.torch.inference_mode():
            self.lens.fill_(n)
        self.host_lens = [n] * self.B

    def _mlp(self, x, layer: int):
        F = self.F
        h = F.rms_norm(x, (self.H,), self.norm)
        gate, up = (h @ self.wgu[layer]).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ self.wd[layer]

    def prefill(self, slot: int, n_tokens: int) -> None:
        torch, F = self.torch, self.F
        if n_tokens >= self.max_context:
            raise ValueError(f"prompt of {n_tokens} tokens does not fit the context {self.max_context}")
        with torch.inference_mode():
            ids = torch.randint(0, self.V, (n_tokens,), device=self.device, generator=self.gen)
            x = self.embed[ids][None]  # [1, n, H]
            for layer in range(self.L):
                h = F.rms_norm(x, (self.H,), self.norm)
                q, k, v = (h @ self.wqkv[layer]).view(1, n_tokens, 3, self.heads, self.d).permute(2, 0, 3, 1, 4)
                self.k_cache[layer, slot, :, :n_tokens] = k[0]
                self.v_cache[layer, slot, :, :n_tokens] = v[0]
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [1, heads, n, d]
                x = x + a.transpose(1, 2).reshape(1, n_tokens, self.H) @ self.wo[layer]
                x = self._mlp(x, layer)
            logits = F.rms_norm(x[:, -1], (self.H,), self.norm) @ self.head
            self.tokens[slot] = logits.argmax(-1)[0]
            self.lens[slot] = n_tokens
        self.host_lens[slot] = n_tokens

    def decode(self, advance: bool = True) -> None:
        torch, F = self.torch, self.F
        B, T = self.B, max(self.host_lens) + 1  # attention over the longest context in the batch
        if T > self.max_context:
            raise ValueError(f"context {T} is past the cache's {self.max_context}")
        with torch.inference_mode():
            x = self.embed[self.tokens]  # [B, H]
            pos = self.lens
            mask = (self.positions[:T][None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, T]
            for layer in range(self.L):
                h = F.rms_norm(x, (self.H,), self.norm)
                q, k, v = (h @ self.wqkv[layer]).view(B, 3, self.heads, self.d).unbind(1)  # each [B, heads, d]
                self.k_cache[layer][self.slots, :, pos] = k
                self.v_cache[layer][self.slots, :, pos] = v
                a = F.scaled_dot_product_attention(q[:, :, None], self.k_cache[layer, :, :, :T],
                                                   self.v_cache[layer, :, :, :T], attn_mask=mask)
                x = x + a.reshape(B, self.H) @ self.wo[layer]
                x = self._mlp(x, layer)
            logits = F.rms_norm(x, (self.H,), self.norm) @ self.head
            self.tokens = logits.argmax(-1)
            if advance:
                self.lens += 1
        if advance:
            self.host_lens = [n + 1 for n in self.host_lens]

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
        """Median milliseconds of ``fn``: CUDA events on a GPU, the host clock on the CPU."""
        torch = self.torch
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def measure_prefill_weight(engine: TorchDecoder, batch_size: int, prompt_len: tuple[int, int],
                           output_len: tuple[int, int], repeats: int) -> tuple[float, dict]:
    """Time per prefill token over time per decode token, at this batch size (the engine reset
    to it): a prefill of the mean prompt length, and decode steps of the whole batch at the
    mean context (mean prompt plus half the mean output)."""
    prompt = round(sum(prompt_len) / 2)
    context = prompt + round(sum(output_len) / 4)
    engine.set_context(context)
    decode_ms = engine.time_ms(lambda: engine.decode(advance=False), repeats)
    prefill_ms = engine.time_ms(lambda: engine.prefill(0, prompt), repeats)
    engine.set_context(0)
    per_prefill_token = prefill_ms / prompt
    per_decode_token = decode_ms / batch_size
    return per_prefill_token / per_decode_token, {
        "prefill_ms": prefill_ms, "prefill_tokens": prompt, "prefill_ms_per_token": per_prefill_token,
        "decode_step_ms": decode_ms, "decode_batch": batch_size, "decode_context": context,
        "decode_ms_per_token": per_decode_token, "timer": "cuda-events" if engine.cuda else "host-clock"}


# ----------------------------------------------------------------------------- report


def machine_info(engine: TorchDecoder | None, nvml_index: int | None) -> dict:
    """The device and driver; ``nvml_index`` None: not metered (no NVML asked)."""
    info: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if engine is not None and not engine.cuda:
        info["device"] = "cpu"
    if nvml_index is not None:
        import pynvml

        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            name = pynvml.nvmlDeviceGetName(handle)
            info["nvml_name"] = name.decode() if isinstance(name, bytes) else name
            info["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3  # read, never set
        except pynvml.NVMLError:
            pass
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "not measured" if value is None else format(value, spec)


def markdown(results: Sequence[WindowResult]) -> str:
    lines = [("| B | prefill weight | tokens/s | mean power W | NVML J | attributed + idle J | idle J | diff "
              "| J/output token | J/response (n) | check |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = None if r.relative_difference is None else 100 * r.relative_difference
        per_response = _fmt(r.joules_per_response_mean, ".2f")
        lines.append(
            f"| {r.batch_size} | {r.prefill_weight:.4f} | {r.tokens_per_s:.0f} | {_fmt(r.mean_power_w, '.1f')} "
            f"| {_fmt(r.nvml_joules, '.1f')} | {_fmt(r.attributed_plus_idle_joules, '.1f')} "
            f"| {_fmt(r.idle_joules, '.2f')} | {_fmt(diff, '.3f')}{'' if diff is None else '%'} "
            f"| {_fmt(r.joules_per_output_token, '.4f')} | {per_response} ({r.responses_whole}) "
            f"| {r.check or 'not measured'} |")
    return "\n".join(lines)


def _lengths(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"want LOW:HIGH with 1 <= LOW <= HIGH, not {text!r}")
    return lo, hi


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(".")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8,32,128",
                        type=lambda s: [int(b) for b in s.split(",") if b.strip()])
    parser.add_argument("--seconds", type=float, default=20.0, help="steady window per batch size")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before each window (default 5; dry run 0.5)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between meter samples")
    parser.add_argument("--out", type=Path, default=out / "energy-device-check.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny model, no meter: exercise the workload and attribution; energy not measured")
    parser.add_argument("--nvml-index", type=int, default=0, help="the GPU's NVML index (CUDA device 0)")
    parser.add_argument("--prompt-len", type=_lengths, default=None, help="LOW:HIGH (default 64:1024; dry run 4:32)")
    parser.add_argument("--output-len", type=_lengths, default=None, help="LOW:HIGH (default 32:512; dry run 2:16)")
    for name, default in GPU_MODEL.items():
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"model size (default {default}; dry run {TINY_MODEL[name]})")
    parser.add_argument("--device", default=None, help="torch device (default cuda; dry run cpu)")
    parser.add_argument("--dtype", default=None, help="torch dtype (default bfloat16; dry run float32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats for the prefill weight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, lengths = (TINY_MODEL, TINY_LENGTHS) if args.dry_run else (GPU_MODEL, GPU_LENGTHS)
    for name, default in model.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name, default in lengths.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.dtype = args.dtype or ("float32" if args.dry_run else "bfloat16")
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.dry_run else 5.0)
    args.repeats = args.repeats or (3 if args.dry_run else 10)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counters = None
    if not args.dry_run:
        if importlib.util.find_spec("pynvml") is None:
            print("energy not measurable: pynvml (the nvidia-ml-py package) is not installed here; "
                  "install it, or run with --dry-run", file=sys.stderr)
            return 2
        import torch

        if not torch.cuda.is_available():
            print("energy not measurable: torch sees no CUDA device here (--dry-run runs on the CPU)",
                  file=sys.stderr)
            return 2
        counters = nvml_counters([args.nvml_index])
        if not counters:
            print(f"energy not measurable: no NVML total-energy counter for GPU {args.nvml_index}", file=sys.stderr)
            return 2

    max_context = args.prompt_len[1] + args.output_len[1] + 1
    engine = TorchDecoder(hidden=args.hidden, mlp=args.mlp, layers=args.layers, heads=args.heads, vocab=args.vocab,
                          max_context=max_context, device=args.device, dtype=args.dtype, seed=args.seed)
    machine = machine_info(engine, args.nvml_index if counters else None)
    print(f"energy device check on {machine.get('device')} (driver {machine.get('driver', '-')}, "
          f"torch {machine.get('torch')}): {engine.parameters / 1e6:,.1f}M parameters, {args.dtype}; "
          f"meter: {', '.join(c.name for c in counters) if counters else 'none (not measured)'}", flush=True)
    results: list[WindowResult] = []
    for b in args.batch_sizes:
        engine.reset(b)
        weight, timing = measure_prefill_weight(engine, b, args.prompt_len, args.output_len, args.repeats)
        print(f"B={b}: prefill weight {weight:.4f} (prefill {timing['prefill_ms_per_token'] * 1e3:.1f} us/token "
              f"over {timing['prefill_tokens']} tokens; decode {timing['decode_ms_per_token'] * 1e3:.1f} us/token, "
              f"step {timing['decode_step_ms']:.2f} ms at context {timing['decode_context']})", flush=True)
        scheduler = Scheduler(b, args.prompt_len, args.output_len, seed=args.seed + b)
        result = run_window(engine, scheduler, prefill_weight=weight, seconds=args.seconds,
                            interval_s=args.interval, counters=counters, warmup_s=args.warmup, timing=timing)
        results.append(result)
        print(f"B={b}: {result.output_tokens} output tokens in {result.seconds:.1f} s "
              f"({result.tokens_per_s:.0f}/s), {result.responses_finished} responses; "
              + (f"NVML {result.nvml_joules:.1f} J, attributed + idle {result.attributed_plus_idle_joules:.1f} J "
                 f"(idle {result.idle_joules:.2f} J): {result.check}" if result.check else "energy not measured"),
              flush=True)
    engine.k_cache = engine.v_cache = None

    checks = [r.check for r in results]
    passed = None if counters is None else all(c == "PASS" for c in checks)
    report = {
        "check": "energy per request (issue 18)", "measured": counters is not None, "pass": passed,
        "tolerance": TOLERANCE, "machine": machine,
        "meter": [c.name for c in counters] if counters else None,
        "config": {"model": {name: getattr(args, name) for name in GPU_MODEL}, "parameters": engine.parameters,
                   "dtype": args.dtype, "device": args.device, "prompt_len": list(args.prompt_len),
                   "output_len": list(args.output_len), "seconds": args.seconds, "warmup_s": args.warmup,
                   "interval_s": args.interval, "batch_sizes": args.batch_sizes, "seed": args.seed},
        "results": [vars(r) for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    print(f"\nwrote {args.out}\n")
    print(markdown(results))
    print(f"\n{'not measured (dry run)' if passed is None else 'PASS' if passed else 'FAIL'}: attributed + idle "
          f"within {TOLERANCE:.0%} of NVML's window total")
    return 1 if passed is False else 0


if __name__ == "__main__":
    sys.exit(main())
