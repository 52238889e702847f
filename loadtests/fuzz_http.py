"""Schemathesis against one isolation domain's OpenAPI document: every operation, three passes.

  * positive: bodies the document allows, with a tenant's key;
  * negative: bodies, headers and parameters the document forbids, with the key;
  * unauthenticated: allowed bodies with no key, a malformed header or an unknown key
    (every ``/v1`` operation must answer 401).

The check is schemathesis's own ``not_a_server_error`` with 503 among the expected statuses
(a loading or full pool answers 503 by design); the document itself is fabriek's
(``serving/frontdoor/openapi_schema.py``), served at ``<domain>/openapi.json``. Examples are
not shrunk: every failure is kept, with a curl command that reproduces it.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from typing import Any, Iterator

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup

# What the check accepts: every non-5xx status, and 503 (a pool loading, full or down).
EXPECTED_STATUSES = ["2xx", "3xx", "4xx", "503"]
PASSES = ("positive", "negative", "unauthenticated")
# Stand-ins for the key in the unauthenticated pass: none, malformed, unknown.
_NOT_A_KEY = (None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer fk-not-a-key", "bearer  ", "Bearer \tx")
_KEY_SHOWN = "$FABRIEK_KEY"  # how reproducers write the tenant's key
_TIMEOUT_S = 120


def load_schema(base: str, model: str | None) -> schemathesis.BaseSchema:
    """The domain's document as served, with ``model`` offered beside any string (so that many
    generated requests name a model the tenant may use), the check's expected statuses set and
    reproducers unsanitized (``_record`` writes the key as ``$FABRIEK_KEY``)."""
    document = httpx.get(f"{base}/openapi.json", timeout=30).raise_for_status().json()
    if model is not None:
        document = copy.deepcopy(document)
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            properties = document["components"]["schemas"][name]["properties"]
            properties["model"] = {"anyOf": [{"const": model}, properties["model"]]}
    config = schemathesis.Config.from_dict({
        "checks": {"not_a_server_error": {"expected-statuses": EXPECTED_STATUSES}},
        "output": {"sanitization": {"enabled": False}}})
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.config.update(base_url=base)
    return schema


def run_http_fuzz(base: str, key: str, *, examples: int, model: str | None = None,
                  passes: tuple[str, ...] = PASSES, derandomize: bool = False) -> dict[str, Any]:
    """Fuzz every operation of the domain at ``base`` with ``examples`` examples per pass.

    Args:
        base: the domain's front door, ``http://HOST:PORT/<domain>``.
        key: a key of a tenant of that domain (its quota should cap ``max_tokens``).
        examples: Hypothesis examples per operation and pass.
        model: a model id the tenant may use, mixed into the generated ``model`` fields.
        passes: which of ``PASSES`` to run.
        derandomize: the same examples on every run (for CI).

    Returns:
        ``{"requests", "passes": {pass: {operation: {status: count}}}, "failures": [...],
        "unauthenticated_not_401": [...], "negative_accepted": [...], "slowest": [...]}``; a failure
        is a 5xx other than 503 (or no answer at all), each with a curl reproducer. Negative
        examples answered 2xx (the document is stricter than the server) and the slowest requests
        come with theirs too, for information.
    """
    schema = load_schema(base, model)
    session = requests.Session()
    result: dict[str, Any] = {"requests": 0, "passes": {}, "failures": [], "unauthenticated_not_401": [],
                              "negative_accepted": [], "slowest": []}
    for name in passes:
        statuses: dict[str, Counter] = {}
        for operation in _operations(schema):
            statuses[operation.label] = _fuzz_operation(operation, name, key, examples, session, result,
                                                        derandomize)
        result["passes"][name] = {label: dict(sorted(c.items())) for label, c in statuses.items()}
    return result


def _operations(schema: schemathesis.BaseSchema) -> Iterator[Any]:
    for operation in schema.get_all_operations():
        yield operation.ok()


def _fuzz_operation(operation, name: str, key: str, examples: int, session: requests.Session,
                    result: dict, derandomize: bool) -> Counter:
    """One pass over one operation: its status counts; failures go into ``result``."""
    raw = operation.definition.raw
    if name == "negative" and not raw.get("requestBody") and not raw.get("parameters") \
            and {} in raw.get("security", [{}]):
        return Counter({"nothing to negate": 1})  # no body, no parameters, no required key
    statuses: Counter = Counter()
    mode = GenerationMode.NEGATIVE if name == "negative" else GenerationMode.POSITIVE
    needs_key = operation.path.startswith("/v1/")

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=derandomize)
    @given(case=operation.as_strategy(generation_mode=mode), stand_in=st.sampled_from(_NOT_A_KEY))
    @_with_documented_examples(operation, name)
    def one(case, stand_in):
        headers = {"Authorization": f"Bearer {key}"} if name != "unauthenticated" else (
            {} if stand_in is None else {"Authorization": stand_in})
        if name == "unauthenticated" and case.headers:
            case.headers.pop("Authorization", None)
        started = time.monotonic()
        try:
            response = case.call(session=session, headers=headers, timeout=_TIMEOUT_S)
        except requests.RequestException as err:  # the server hung up or timed out: as bad as a 500
            statuses[type(err).__name__] += 1
            result["failures"].append(_record(case, name, headers, key, type(err).__name__, str(err)))
            return
        elapsed_s = time.monotonic() - started
        result["requests"] += 1
        statuses[str(response.status_code)] += 1
        _keep_slowest(result["slowest"], elapsed_s, lambda: _record(case, name, headers, key, response.status_code,
                                                                     response.text))
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=headers)
        except FailureGroup:
            result["failures"].append(_record(case, name, headers, key, response.status_code, response.text))
        if name == "negative" and response.status_code < 300:
            result["negative_accepted"].append(_record(case, name, headers, key, response.status_code,
                                                        response.text))
        if name == "unauthenticated" and needs_key and response.status_code != 401:
            result["unauthenticated_not_401"].append(
                _record(case, name, headers, key, response.status_code, response.text))

    one()
    return statuses


def _with_documented_examples(operation, name: str):
    """Send the bodies the document gives as examples first (they reach an engine), in every
    pass but the negative one."""
    def decorate(test):
        if name == "negative":
            return test
        content = (operation.definition.raw.get("requestBody") or {}).get("content", {})
        for documented in content.get("application/json", {}).get("examples", {}).values():
            case = operation.Case(body=documented["value"], media_type="application/json")
            test = example(case=case, stand_in=None)(test)
        return test

    return decorate


def _keep_slowest(slowest: list[dict], elapsed_s: float, describe, keep: int = 5) -> None:
    """Keep the ``keep`` slowest requests (described only when kept: reproducers cost)."""
    if len(slowest) < keep or elapsed_s > slowest[-1]["elapsed_s"]:
        slowest.append({"elapsed_s": round(elapsed_s, 2), **describe()})
        slowest.sort(key=lambda r: -r["elapsed_s"])
        del slowest[keep:]


def _record(case, name: str, headers: dict, key: str, status: int | str, answer: str) -> dict:
    """A request and its answer, with a curl command that sends it again."""
    return {"pass": name, "operation": case.operation.label, "status": status,
            "answer": answer[:500],
            "reproducer": case.as_curl_command(headers=headers).replace(key, _KEY_SHOWN),
            "body": None if isinstance(case.body, NotSet) else
            json.dumps(case.body, default=repr).replace(key, _KEY_SHOWN)[:2000]}
