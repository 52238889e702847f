"""The admission pipeline: table-driven cases, then properties over arbitrary configs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routers import (Admission, AdmissionPipeline, AdmissionRequest, Candidate, ClassPolicy, Rejection,
                     RejectionReason, Route, Tenancy, Tenant, TenantClass, cache_salt_for)

SECRET = b"s" * 32
GOV = Tenant("gov", TenantClass.GOVERNMENT, frozenset({"m", "big"}))
PILOT = Tenant("pilot", TenantClass.COMMERCIAL, frozenset({"m"}))
LAB = Tenant("lab", TenantClass.RESEARCH, frozenset({"m"}))
TENANCY = Tenancy(
    tenants={t.id: t for t in (GOV, PILOT, LAB)},
    classes={TenantClass.GOVERNMENT: ClassPolicy(frozenset({"government"}), priority=0),
             TenantClass.COMMERCIAL: ClassPolicy(frozenset({"commercial"}), priority=10)})
# LAB's class has no policy: it may use no pool at all.


def candidates(ready=("government", "commercial")):
    routes = [Route("government", "m"), Route("government", "big"), Route("commercial", "m")]
    return [Candidate(r, r.pool in ready) for r in routes]


@pytest.mark.parametrize(("tenant", "model", "ready", "expected"), [
    (GOV, "m", ("government", "commercial"), Route("government", "m")),
    (GOV, "big", ("government", "commercial"), Route("government", "big")),
    (PILOT, "m", ("government", "commercial"), Route("commercial", "m")),
    (PILOT, "big", ("government", "commercial"), RejectionReason.MODEL_NOT_FOUND),  # not granted
    (GOV, "gpt-4o", ("government", "commercial"), RejectionReason.MODEL_NOT_FOUND),  # not served
    (GOV, "m", ("commercial",), RejectionReason.POOL_UNAVAILABLE),  # fails closed
    (PILOT, "m", ("government",), RejectionReason.POOL_UNAVAILABLE),
    (LAB, "m", ("government", "commercial"), RejectionReason.NO_POOL),
])
def test_admission_table(tenant, model, ready, expected):
    decision = AdmissionPipeline(TENANCY, SECRET).admit(AdmissionRequest(tenant, model), candidates(ready))
    if isinstance(expected, Route):
        assert isinstance(decision, Admission) and decision.route == expected
    else:
        assert isinstance(decision, Rejection) and decision.reason is expected
        assert model in decision.message or decision.reason is RejectionReason.NO_POOL


def test_rejection_names_the_refusing_filter():
    pipeline = AdmissionPipeline(TENANCY, SECRET)
    refusals = {pipeline.admit(AdmissionRequest(t, m), candidates(ready)).refused_by
                for t, m, ready in [(LAB, "m", ()), (PILOT, "big", ()), (GOV, "m", ())]}
    assert refusals == {"pool_class", "model_access", "readiness"}


def test_admission_carries_priority_salt_and_tenant():
    decision = AdmissionPipeline(TENANCY, SECRET).admit(AdmissionRequest(PILOT, "m"), candidates())
    assert decision.priority == 10
    assert decision.cache_salt == cache_salt_for(SECRET, "pilot")
    assert decision.tenant is PILOT


def test_salts_differ_between_tenants_and_secrets():
    assert cache_salt_for(SECRET, "gov") != cache_salt_for(SECRET, "pilot")
    assert cache_salt_for(SECRET, "gov") != cache_salt_for(b"t" * 32, "gov")


@pytest.mark.parametrize(("tenant", "model", "expected"), [
    (PILOT, None, "m"),
    (PILOT, "other", "other"),
    (GOV, None, RejectionReason.MODEL_REQUIRED),
])
def test_resolve_model(tenant, model, expected):
    resolved = AdmissionPipeline(TENANCY, SECRET).resolve_model(tenant, model)
    assert resolved == expected or resolved.reason is expected


# --- properties: whatever the config, the request and the readiness ----------------------

POOLS = ["p0", "p1", "p2", "p3"]
MODELS = ["a", "b", "c"]
pools = st.frozensets(st.sampled_from(POOLS))
models = st.frozensets(st.sampled_from(MODELS))


@st.composite
def worlds(draw):
    classes = {c: ClassPolicy(draw(pools), draw(st.integers(-5, 5)))
               for c in draw(st.frozensets(st.sampled_from(list(TenantClass))))}
    tenants = [Tenant(f"t{i}", draw(st.sampled_from(list(TenantClass))), draw(models))
               for i in range(draw(st.integers(1, 4)))]
    routes = draw(st.lists(st.builds(Route, st.sampled_from(POOLS), st.sampled_from(MODELS)),
                           unique=True, max_size=8))
    cands = [Candidate(r, draw(st.booleans())) for r in routes]
    return Tenancy({t.id: t for t in tenants}, classes), tenants, cands


@settings(max_examples=300, deadline=None)
@given(world=worlds(), data=st.data())
def test_no_request_reaches_a_pool_its_class_may_not_use(world, data):
    tenancy, tenants, cands = world
    tenant = data.draw(st.sampled_from(tenants))
    model = data.draw(st.sampled_from(MODELS + ["unknown"]))
    decision = AdmissionPipeline(tenancy, SECRET).admit(AdmissionRequest(tenant, model), cands)
    if isinstance(decision, Admission):
        policy = tenancy.classes.get(tenant.tenant_class)
        assert policy is not None and decision.route.pool in policy.pools
        assert decision.route.model_id == model and model in tenant.model_ids
        assert Candidate(decision.route, True) in cands  # only a ready, real route
        assert decision.cache_salt == cache_salt_for(SECRET, tenant.id)
    else:
        # Refused only when no ready route of the tenant's class serves a granted model.
        allowed = tenancy.pools_for(tenant)
        assert not any(c.is_ready and c.route.pool in allowed and c.route.model_id == model
                       and model in tenant.model_ids for c in cands)


@settings(max_examples=200, deadline=None)
@given(world=worlds(), data=st.data())
def test_admission_is_deterministic(world, data):
    tenancy, tenants, cands = world
    request = AdmissionRequest(data.draw(st.sampled_from(tenants)), data.draw(st.sampled_from(MODELS)))
    assert (AdmissionPipeline(tenancy, SECRET).admit(request, cands)
            == AdmissionPipeline(tenancy, SECRET).admit(request, list(cands)))
