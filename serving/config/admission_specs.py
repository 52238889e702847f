"""Config sections for fair admission: tenant quotas, pool queues, the usage ledger.

Part of the platform config (``serving.config``); split out to keep each module to one
idea. Each section converts to the policy core's own types (``routers``).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from routers.fair_queue import PoolLimits
from routers.quota import QuotaLimits
from serving.config.home import DOMAIN_PLACEHOLDER, default_ledger_url, domain_home


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuotaSpec(_Frozen):
    """A tenant's quota; an unset field is unlimited."""

    requests_per_minute: int | None = Field(None, ge=1, description=(
        "Sustained requests per minute (a minute's worth may come at once). Over it: 429."))
    tokens_per_minute: int | None = Field(None, ge=1, description=(
        "Prompt plus completion tokens per minute; `max_tokens` is reserved at admission "
        "and what is not generated flows back. Over it: 429."))
    max_concurrent_requests: int | None = Field(None, ge=1, description=(
        "Requests of the tenant running or queued at once. Over it: 429."))
    max_tokens: int | None = Field(None, ge=1, description=(
        "Largest `max_tokens` a request may ask for, and the default when it asks none. "
        "Over it: 400 (waiting would not help)."))
    max_prompt_tokens: int | None = Field(None, ge=1, description=(
        "Largest prompt, in the model's tokens. Over it: 400."))

    def to_limits(self) -> QuotaLimits:
        return QuotaLimits(**self.model_dump())


class PoolAdmissionSpec(_Frozen):
    """How many requests each engine deployment of a pool takes, and how many may wait."""

    max_running: int = Field(64, ge=1, description=(
        "Requests admitted to one engine deployment at once (all its replicas); match the "
        "engines' `max_num_seqs` x replicas so that vLLM's own queue stays short."))
    max_queued: int = Field(64, ge=0, description=(
        "Requests that may wait for a slot (each tenant at most its weighted share); "
        "beyond it requests are shed at once with 503 and Retry-After."))
    max_queue_wait_s: float = Field(30.0, gt=0, description=(
        "The longest a request waits in the queue before it is shed (503)."))
    retry_after_s: float = Field(2.0, gt=0, description="Retry-After given with a 503 for a full pool.")

    def to_limits(self) -> PoolLimits:
        return PoolLimits(self.max_running, self.max_queued, self.max_queue_wait_s, self.retry_after_s)


class LedgerSpec(_Frozen):
    """Where every request's usage record is written: one database per isolation domain."""

    url: str | None = Field(None, description=(
        "SQLAlchemy URL of a domain's usage database, e.g. "
        "postgresql+psycopg://fabriek_{domain}@host/fabriek_{domain} (install fabriek[postgres]); "
        "`{domain}` stands for the domain's name (required with two or more domains, so that "
        "no domain's writer holds another's records). Default: SQLite at "
        "$FABRIEK_HOME/domains/{domain}/usage.db."))
    url_env: str | None = Field("FABRIEK_USAGE_DATABASE_URL", description=(
        "Environment variable that, when set where the ingress runs, holds the URL instead "
        "(the Helm chart fills it from the domain's own Secret, so a password never sits in "
        "the config)."))

    def resolved_url(self, domain: str) -> str:
        """The URL in effect for ``domain`` in this process: the variable's, the config's, or
        the default."""
        from_env = os.environ.get(self.url_env) if self.url_env else None
        if from_env:
            return from_env
        if self.url:
            return self.url.replace(DOMAIN_PLACEHOLDER, domain)
        return default_ledger_url(domain_home(domain))

    def is_shared_by_domains(self) -> bool:
        """Whether the config names one database for every domain."""
        return self.url is not None and DOMAIN_PLACEHOLDER not in self.url
