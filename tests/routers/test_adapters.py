"""A tenant's LoRA adapters: only it may use them, on its base model's engines, and a
hostile tenant learns nothing of them (the same refusal as a model that does not exist)."""

from __future__ import annotations

from routers import (Admission, AdmissionPipeline, AdmissionRequest, Candidate, ClassPolicy, Rejection,
                     RejectionReason, Route, Tenancy, Tenant, TenantClass)

SECRET = b"s" * 32
MINISTRY = Tenant("ministry", TenantClass.GOVERNMENT, frozenset({"m", "e5"}),
                  adapters=frozenset({("ministry-permits", "m")}))
CITY = Tenant("city", TenantClass.GOVERNMENT, frozenset({"m"}))
PILOT = Tenant("pilot", TenantClass.COMMERCIAL, frozenset({"m"}))
TENANCY = Tenancy(tenants={t.id: t for t in (MINISTRY, CITY, PILOT)},
                  classes={TenantClass.GOVERNMENT: ClassPolicy(frozenset({"government"})),
                           TenantClass.COMMERCIAL: ClassPolicy(frozenset({"commercial"}))})
ROUTES = [Route("government", "m"), Route("government", "e5"), Route("commercial", "m")]


def admit(tenant: Tenant, model: str, ready=("government", "commercial")) -> Admission | Rejection:
    return AdmissionPipeline(TENANCY, SECRET).admit(AdmissionRequest(tenant, model),
                                                    [Candidate(r, r.pool in ready) for r in ROUTES])


def test_an_adapter_runs_on_its_base_models_engines_under_its_own_name():
    decision = admit(MINISTRY, "ministry-permits")
    assert isinstance(decision, Admission)
    assert decision.route == Route("government", "m")
    assert decision.adapter == "ministry-permits" and decision.served_model == "ministry-permits"
    assert admit(MINISTRY, "m").served_model == "m"  # the base model stays the base model


def test_another_tenant_gets_the_refusal_of_a_model_that_does_not_exist():
    for tenant in (CITY, PILOT):
        mine, missing = admit(tenant, "ministry-permits"), admit(tenant, "no-such-model")
        assert isinstance(mine, Rejection) and mine.reason is RejectionReason.MODEL_NOT_FOUND
        assert (mine.reason, mine.refused_by) == (missing.reason, missing.refused_by)
        assert mine.message == missing.message.replace("no-such-model", "ministry-permits")


def test_an_adapter_fails_closed_with_its_pool_and_names_itself():
    decision = admit(MINISTRY, "ministry-permits", ready=("commercial",))
    assert isinstance(decision, Rejection) and decision.reason is RejectionReason.POOL_UNAVAILABLE
    assert "ministry-permits" in decision.message


def test_an_adapter_of_a_chat_model_answers_the_chat_endpoints_only():
    pipeline = AdmissionPipeline(TENANCY, SECRET)
    assert pipeline.resolve_model(MINISTRY, "ministry-permits", frozenset({"m"})) == "ministry-permits"
    wrong = pipeline.resolve_model(MINISTRY, "ministry-permits", frozenset({"e5"}))
    assert isinstance(wrong, Rejection) and wrong.reason is RejectionReason.WRONG_ENDPOINT
    # Another tenant is not told that the adapter exists, at any endpoint.
    assert pipeline.resolve_model(CITY, "ministry-permits", frozenset({"e5"})) == "ministry-permits"


def test_a_tenant_without_adapters_has_none():
    assert CITY.base_of("m") is None and MINISTRY.base_of("ministry-permits") == "m"
    assert MINISTRY.base_of("m") is None
