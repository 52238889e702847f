"""Config sections for energy: how engines meter it, and the power caps admission keeps.

Part of the platform config (``serving.config``). The caps convert to the policy core's
``routers.power_budget`` types; ``fabriek power cap`` adds caps at run time on top of these.
"""

from __future__ import annotations

import datetime
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from routers.power_budget import parse_watts

_CAP_NAME = re.compile(r"^[a-z0-9]([a-z0-9:._-]{0,62}[a-z0-9])?$")
_SCOPE = re.compile(r"^(platform|domain:[a-z0-9-]+|pool:[a-z0-9-]+)$")


def check_cap_name(name: str) -> str:
    """A cap's name as metrics label it: short, lowercase, no spaces (from the config or the CLI).

    Raises:
        ValueError: any other name.
    """
    if not isinstance(name, str) or not _CAP_NAME.match(name):
        raise ValueError(f"cap name {name!r}: use up to 64 lowercase letters, digits and - . _ :")
    return name


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnergySpec(_Frozen):
    """How engine replicas meter energy (docs/energy.md)."""

    sample_interval_s: float = Field(1.0, ge=0.1, le=60, description=(
        "How often each engine replica reads its energy counters (and also when a request "
        "finishes, to close its last interval). The power budget acts at this pace."))
    prefill_weight: float = Field(0.1, gt=0, le=10, description=(
        "What a prefilled prompt token costs against a generated one, when an interval's "
        "energy is divided among its requests. Measure it for your hardware with "
        "loadtests/energy_device_check.py (it prints the ratio of step times)."))
    powercap_root: str = Field("/sys/class/powercap", description=(
        "Where CPU pools read RAPL counters (Linux powercap)."))
    headroom: float = Field(0.05, ge=0, lt=1, description=(
        "Share of a power cap kept free before running limits go back up."))


class PoolEnergySpec(_Frozen):
    """A pool's part in metering and power caps."""

    counters: Literal["auto", "none"] = Field("auto", description=(
        "`auto`: the NVML energy counters of the engine's GPUs; on a CPU pool, the RAPL "
        "package counters, of which each engine takes the part its processes kept the CPUs "
        "busy. `none`: not measured (energy is recorded as null)."))
    floor: int = Field(1, ge=1, description=(
        "The fewest requests a power cap may leave running in each engine deployment of the pool."))
    idle_watts: float = Field(0.0, ge=0, description=(
        "What one engine of the pool draws with nothing running; the power budget learns a "
        "request's cost above it. 0: not known."))


class PowerCapSpec(_Frozen):
    """A power cap in force from start-up (a grid operator's standing limit)."""

    name: str = Field(description="What metrics, the ledger and `fabriek power` call it.")
    watts: float = Field(description="The most its scope may draw: a number of watts or e.g. `2.5kW`.")
    scope: str = Field("platform", description=(
        "`platform` (every pool), `domain:NAME` (an isolation domain's pools) or `pool:NAME`."))
    until: datetime.datetime | None = Field(None, description=(
        "When it ends (ISO 8601; without a zone: the machine's local time); unset: until lifted."))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_cap_name(value)

    @field_validator("watts", mode="before")
    @classmethod
    def _watts(cls, value):
        if isinstance(value, str):
            return parse_watts(value)
        return value

    @field_validator("watts")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0 or value == float("inf"):
            raise ValueError("a power cap must be a positive, finite number of watts")
        return value

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if not _SCOPE.match(value):
            raise ValueError(f"{value!r}: use `platform`, `domain:NAME` or `pool:NAME`")
        return value

    def until_timestamp(self) -> float | None:
        if self.until is None:
            return None
        until = self.until if self.until.tzinfo else self.until.astimezone()
        return until.timestamp()


# The platform's power governor (serving.power.governor): a Serve application of its own,
# outside every isolation domain, that engines report to and `fabriek power` talks to.
POWER_APP = "fabriek-power"
GOVERNOR_DEPLOYMENT = "PowerGovernor"
