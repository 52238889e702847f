"""Where fabriek keeps what it makes on a machine: prepared models, keys, secrets, the ledger."""

from __future__ import annotations

import os
from pathlib import Path


def fabriek_home() -> Path:
    """Return the cache directory: ``$FABRIEK_HOME``, else ``$XDG_CACHE_HOME/fabriek``."""
    if os.environ.get("FABRIEK_HOME"):
        return Path(os.environ["FABRIEK_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "fabriek"


# Stands for the domain's name in per-domain paths and URLs of the config.
DOMAIN_PLACEHOLDER = "{domain}"


def domain_home(domain: str) -> Path:
    """Where one isolation domain's keys, salt and (SQLite) ledger live by default."""
    return (fabriek_home() / "domains" / domain).resolve()


def default_ledger_url(home: Path) -> str:
    """The SQLite usage ledger under ``home``, where one machine keeps it by default."""
    return f"sqlite:///{home / 'usage.db'}"


# Where Ray keeps the token of a cluster it started on this machine (Ray 2.60 protects a
# local cluster with one by default): the launcher names it, `fabriek power` presents it.
RAY_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
