"""Config section for API keys and the per-tenant engine isolation secret, one set per domain.

Each isolation domain (``routers.isolation_domains``) holds only its own tenants' key hashes
and its own cache-salt secret, so a process of one domain never sees another's: the paths
name the domain with ``{domain}``, which the config check insists on as soon as there are
two domains.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serving.config.home import DOMAIN_PLACEHOLDER, domain_home


class AuthSpec(BaseModel):
    """API keys and the per-tenant engine isolation secrets, per isolation domain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_file: Path | None = Field(None, description=(
        "JSON file of a domain's API key records (salted hashes only), managed with "
        "`fabriek keys`; `{domain}` in the path stands for the domain's name (required with "
        "two or more domains). May be a mounted Kubernetes Secret. "
        "Default: $FABRIEK_HOME/domains/{domain}/api-keys.json."))
    cache_salt_secret_file: Path | None = Field(None, description=(
        "Secret from which each tenant's vLLM prefix-cache salt is derived, one per domain "
        "(`{domain}` as in `key_file`); created (random, 0600) if absent. "
        "Default: $FABRIEK_HOME/domains/{domain}/cache-salt.secret."))
    key_reload_interval_s: float = Field(1.0, gt=0, le=60, description=(
        "How often at most the ingress looks at the key file for created or revoked keys."))

    def resolved_key_file(self, domain: str) -> Path:
        """The domain's key file path, defaulted and made absolute."""
        return _resolve(self.key_file, "api-keys.json", domain)

    def resolved_cache_salt_secret_file(self, domain: str) -> Path:
        """The domain's cache salt secret path, defaulted and made absolute."""
        return _resolve(self.cache_salt_secret_file, "cache-salt.secret", domain)

    def shared_paths(self) -> list[str]:
        """The fields set to one path for every domain (no ``{domain}`` in them)."""
        return [name for name in ("key_file", "cache_salt_secret_file")
                if getattr(self, name) is not None and DOMAIN_PLACEHOLDER not in str(getattr(self, name))]


def _resolve(path: Path | None, default_name: str, domain: str) -> Path:
    if path is None:
        return domain_home(domain) / default_name
    return Path(str(path).replace(DOMAIN_PLACEHOLDER, domain)).expanduser().resolve()
