"""End to end, fuzzed: schemathesis against the served OpenAPI document and random
``fabriek.v1`` calls over a real channel, a few examples of each (loadtests/fuzz_api.py runs
many). The property: no 5xx but 503, no INTERNAL, UNKNOWN or DATA_LOSS.

The tenant ``fuzz`` (tests/conftest.py) caps ``max_tokens`` at 16, so the examples that reach
the engine finish in about a second each. Examples are derandomized: each run sends the same
requests, and a failure here reproduces with the same command.
"""

from __future__ import annotations

import pytest

from loadtests.fuzz_grpc import run_grpc_fuzz
from loadtests.fuzz_http import run_http_fuzz
from tests.conftest import MODEL_ID

pytestmark = pytest.mark.e2e

TENANT = "fuzz"
HTTP_EXAMPLES = 8  # per operation and pass: 4 operations x 3 passes
GRPC_CALLS = 120


def test_the_openapi_document_fuzzed_gets_no_5xx_but_503(fabriek_server):
    result = run_http_fuzz(fabriek_server.base_url(TENANT), fabriek_server.keys[TENANT], examples=HTTP_EXAMPLES,
                           model=MODEL_ID, derandomize=True)
    assert result["requests"] >= 3 * HTTP_EXAMPLES
    assert not result["failures"], result["failures"]
    assert not result["unauthenticated_not_401"], result["unauthenticated_not_401"]
    # Some examples were answered by the engine, not only refused.
    assert any("200" in result["passes"]["positive"][op] for op in ("POST /v1/chat/completions",
                                                                    "POST /v1/completions"))


def test_random_grpc_messages_never_end_internal_unknown_or_data_loss(fabriek_server):
    domain = fabriek_server.domain_of[TENANT]
    others = tuple({d for d in fabriek_server.domain_of.values() if d != domain})
    result = run_grpc_fuzz(fabriek_server.grpc_target(domain), domain, fabriek_server.keys[TENANT], examples=GRPC_CALLS,
                           model=MODEL_ID, other_domains=others, payloads=("message",), derandomize=True)
    assert result["requests"] == GRPC_CALLS
    assert not result["failures"], result["failures"]
    assert any("OK" in codes for codes in result["codes"].values())


def test_undecodable_grpc_requests_never_end_internal_unknown_or_data_loss(fabriek_server):
    """fabriek decodes requests itself (serving/protos/servicer.py): bad bytes are INVALID_ARGUMENT."""
    domain = fabriek_server.domain_of[TENANT]
    result = run_grpc_fuzz(fabriek_server.grpc_target(domain), domain, fabriek_server.keys[TENANT], examples=30,
                           model=MODEL_ID, payloads=("appended", "bytes"), derandomize=True)
    assert not result["failures"], result["failures"]
