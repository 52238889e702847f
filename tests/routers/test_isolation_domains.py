"""Isolation domains: classes joined by the pools they share, and nothing else."""

from __future__ import annotations

import pytest

from routers import TenantClass, derive_domains

G, R, C = TenantClass.GOVERNMENT, TenantClass.RESEARCH, TenantClass.COMMERCIAL


@pytest.mark.parametrize(("class_pools", "pool_order", "expected"), [
    # The shipped layout: no pool shared, two domains.
    ({G: ["gov"], C: ["com"]}, ["gov", "com"], [("government", {G}, ("gov",)), ("commercial", {C}, ("com",))]),
    # One shared pool joins two classes into one domain, named after both.
    ({G: ["gov", "lab"], R: ["lab"], C: ["com"]}, ["com", "gov", "lab"],
     [("commercial", {C}, ("com",)), ("government-research", {G, R}, ("gov", "lab"))]),
    # Sharing is transitive: government-research and research-commercial make one domain.
    ({G: ["gov"], R: ["gov", "com"], C: ["com"]}, ["gov", "com"],
     [("commercial-government-research", {G, R, C}, ("gov", "com"))]),
    # A pool no class uses is in no domain.
    ({G: ["gov"]}, ["spare", "gov"], [("government", {G}, ("gov",))]),
    # Pools keep config order, domains the order of their first pool.
    ({C: ["c2", "c1"], G: ["g"]}, ["g", "c1", "c2"], [("government", {G}, ("g",)), ("commercial", {C}, ("c1", "c2"))]),
    ({}, ["p"], []),
])
def test_domains_join_classes_through_shared_pools(class_pools, pool_order, expected):
    domains = derive_domains(class_pools, pool_order)
    assert [(d.name, set(d.classes), d.pools) for d in domains] == expected
    # Every class is in exactly one domain.
    assert sorted(c for d in domains for c in d.classes) == sorted(class_pools)


@pytest.mark.parametrize(("class_pools", "is_mixed"), [
    ({G: ["a"], C: ["b"]}, [False, False]),
    ({G: ["a"], C: ["a"]}, [True]),
    ({G: ["a"], R: ["a"]}, [False]),
    ({G: ["a"], R: ["a", "b"], C: ["b"]}, [True]),
])
def test_government_with_commercial_is_flagged(class_pools, is_mixed):
    domains = derive_domains(class_pools, ["a", "b"])
    assert [d.is_mixing_government_and_commercial for d in domains] == is_mixed


def test_tenancy_says_whether_a_tenant_may_use_a_route():
    from routers import ClassPolicy, Tenancy, Tenant

    tenancy = Tenancy(classes={G: ClassPolicy(frozenset({"gov"}))})
    tenant = Tenant("t", G, frozenset({"m"}))
    assert tenancy.may_use(tenant, "gov", "m")
    assert not tenancy.may_use(tenant, "gov", "other-model")
    assert not tenancy.may_use(tenant, "com", "m")
    assert not tenancy.may_use(Tenant("x", C, frozenset({"m"})), "gov", "m")
