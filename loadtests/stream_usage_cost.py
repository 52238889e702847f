"""What the hardening added to the token path: the cost per streamed event of keeping
abandoned streams billable (``serving.admission.stream_usage``).

Every stream asks vLLM for continuous usage; the ingress remembers the last event of each
batch (``last_usage_event``) and, unless the client asked for continuous usage too, cuts the
``"usage"`` member out of each event by position (``without_usage``), without a JSON parse.
This times both on a typical SmolLM2 event, beside one ``json.loads`` of the same event (what
a parse per event would cost), in one process: ratios are what to read on a noisy VM.

Usage: python loadtests/stream_usage_cost.py [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import timeit

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from serving.admission.stream_usage import last_usage_event, without_usage  # noqa: E402

EVENT = ('data: {"id":"chatcmpl-fabriek-0123456789abcdef","object":"chat.completion.chunk",'
         '"created":1796160000,"model":"smollm2-135m-instruct","choices":[{"index":0,'
         '"delta":{"content":" Utrecht"},"logprobs":null,"finish_reason":null}],'
         '"usage":{"prompt_tokens":37,"total_tokens":58,"completion_tokens":21}}\n\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch = [EVENT] * 8

    def best(fn) -> float:
        return min(timeit.repeat(fn, number=args.events, repeat=args.repeats)) / args.events * 1e9

    strip, parse, last = best(lambda: without_usage(EVENT)), best(lambda: json.loads(EVENT[6:])), \
        best(lambda: last_usage_event(batch))
    print(json.dumps({"without_usage_ns_per_event": round(strip), "last_usage_event_ns_per_batch": round(last),
                      "json_loads_ns_per_event": round(parse), "strip_vs_parse": round(strip / parse, 3)}))


if __name__ == "__main__":
    main()
