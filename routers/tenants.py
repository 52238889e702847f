"""Tenants, their classes, and which pools and models each class and tenant may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Collection, Mapping

from routers.request_shape import DEFAULT_MAX_EMBEDDING_INPUTS, DEFAULT_MAX_SEQUENCES


class TenantClass(StrEnum):
    """The kind of organisation a tenant is; it decides the pools its requests may reach."""

    GOVERNMENT = "government"
    RESEARCH = "research"
    COMMERCIAL = "commercial"


@dataclass(frozen=True)
class Tenant:
    """An organisation that calls the API.

    Args:
        id: stable tenant id; it also becomes the OpenAI ``user`` of every request.
        tenant_class: decides the pools (see ``ClassPolicy``).
        model_ids: public model ids this tenant may use.
        adapters: (adapter id, base model id) of the LoRA adapters the tenant owns: only it
            may list and use them, each on its base model's engines (whose model it may use).
    """

    id: str
    tenant_class: TenantClass
    model_ids: frozenset[str]
    adapters: frozenset[tuple[str, str]] = frozenset()

    def base_of(self, model_id: str) -> str | None:
        """The base model of the tenant's adapter ``model_id``; None: not an adapter of its own."""
        return next((base for adapter, base in self.adapters if adapter == model_id), None)

    def models_in(self, served: Collection[str]) -> list[tuple[str, str | None]]:
        """(model id, its base model for an adapter, else None) of what the tenant may use
        among the ``served`` models and the adapters on them, sorted by id."""
        models = [(m, None) for m in self.model_ids if m in served]
        return sorted(models + [(a, base) for a, base in self.adapters if base in served])


@dataclass(frozen=True)
class ClassPolicy:
    """What every tenant of one class gets.

    Args:
        pools: names of the pools whose replicas may serve the class; no others, ever.
        priority: vLLM request priority (priority band); lower values are scheduled first.
        max_sequences: sequences one request may ask for (``n``, beam width, prompt lists).
        max_request_s: longest a request may run, queueing included; None: no limit.
        max_embedding_inputs: texts one embeddings request may send (each a sequence).
        store_responses: the class's Responses are kept (in its domain's own database), so
            that a tenant may continue, retrieve and delete its own.
        responses_kept_s: how long a stored response is kept.
    """

    pools: frozenset[str]
    priority: int = 0
    max_sequences: int = DEFAULT_MAX_SEQUENCES
    max_request_s: float | None = None
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS
    store_responses: bool = False
    responses_kept_s: float = 30 * 86_400.0


@dataclass(frozen=True)
class Tenancy:
    """The tenants and class policies of a deployment, as the platform config states them."""

    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    classes: Mapping[TenantClass, ClassPolicy] = field(default_factory=dict)

    def tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant with this id, or None when the config does not (or no longer) name it."""
        return self.tenants.get(tenant_id)

    def pools_for(self, tenant: Tenant) -> frozenset[str]:
        """Pools the tenant's class may use; empty (nothing is allowed) for a class without a policy."""
        policy = self.classes.get(tenant.tenant_class)
        return policy.pools if policy is not None else frozenset()

    def priority_for(self, tenant: Tenant) -> int:
        """The vLLM priority of the tenant's requests (0 for a class without a policy)."""
        policy = self.classes.get(tenant.tenant_class)
        return policy.priority if policy is not None else 0

    def policy_for(self, tenant: Tenant) -> ClassPolicy:
        """The tenant's class policy (one that allows nothing for a class without a policy)."""
        return self.classes.get(tenant.tenant_class) or _NOTHING

    def may_use(self, tenant: Tenant, pool: str, model_id: str) -> bool:
        """Whether the tenant's requests for ``model_id`` may run on ``pool``."""
        return pool in self.pools_for(tenant) and model_id in tenant.model_ids


_NOTHING = ClassPolicy(frozenset())
