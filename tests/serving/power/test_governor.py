"""The power governor between engine reports and admission controllers, without Ray Serve:
its domains' controllers are real ``AdmissionController``s behind a call-alike of a handle,
and the reports are what engine replicas send (``serving.engine.energy_sampler``)."""

from __future__ import annotations

import asyncio

import pytest

from routers import Route, TenantClass
from routers.fair_queue import PoolLimits
from routers.power_budget import PoolPowerSpec, PowerCap
from serving.admission.admission_controller import AdmissionController
from serving.power.governor import PowerGovernor

GOV, COM = Route("government", "m"), Route("commercial", "m")


class Remote:
    """``handle.method.remote(...)`` on a local object: the call is scheduled, not awaited."""

    def __init__(self, target):
        self._target = target
        self.tasks = []

    def __getattr__(self, name):
        method = getattr(self._target, name)
        outer = self

        class _Method:
            @staticmethod
            def remote(*args):
                outer.tasks.append(asyncio.ensure_future(method(*args)))
        return _Method()


def setup(caps=(), now=1000.0):
    controllers = {
        "government": AdmissionController({}, {GOV: PoolLimits(8, 8, 5.0)}, {GOV: {}}),
        "commercial": AdmissionController({}, {COM: PoolLimits(8, 8, 5.0)}, {COM: {}}),
    }
    remotes = {d: Remote(c) for d, c in controllers.items()}
    clock = [now]
    pools = [PoolPowerSpec("government", TenantClass.GOVERNMENT, 8, floor=2),
             PoolPowerSpec("commercial", TenantClass.COMMERCIAL, 8, floor=1)]
    scopes = {"platform": frozenset({"government", "commercial"}), "pool:commercial": frozenset({"commercial"}),
              "domain:government": frozenset({"government"})}

    async def make():
        return await _construct(pools, scopes, caps, remotes, clock)
    return make, controllers, remotes, clock


async def _construct(pools, scopes, caps, remotes, clock):
    governor = PowerGovernor.__new__(PowerGovernor)
    await governor.__init__(pools, {"government": ("government",), "commercial": ("commercial",)}, scopes,
                            list(caps), interval_s=3600, controller_of=remotes.__getitem__, clock=lambda: clock[0])
    return governor


async def settle(remotes):
    for remote in remotes.values():
        await asyncio.gather(*remote.tasks)
        remote.tasks.clear()


def test_over_a_cap_commercial_gives_first_and_government_keeps_its_limit():
    make, controllers, remotes, _ = setup()

    async def scenario():
        governor = await make()
        await governor.report("government", "g1", 400.0, 1.0, 4)  # 400 W with 4 running
        await governor.report("commercial", "c1", 800.0, 1.0, 8)  # 800 W with 8 running
        cap = await governor.set_cap("grid", 1000.0, "platform")
        await settle(remotes)
        assert cap["pools"] == ["commercial", "government"]
        assert controllers["commercial"].running_limits()["commercial/m"] < 8
        assert controllers["government"].running_limits()["government/m"] == 8
        status = await governor.status()
        assert status["caps"][0]["binding"] is True and status["pools"]["commercial"]["watts"] == 800.0
        assert await governor.lift("grid") is True
        await settle(remotes)
        assert controllers["commercial"].running_limits()["commercial/m"] == 8

    asyncio.run(scenario())


def test_a_cap_on_a_pool_without_a_counter_is_reported_unmetered_and_changes_nothing():
    make, controllers, remotes, _ = setup()

    async def scenario():
        governor = await make()
        await governor.report("commercial", "c1", None, 1.0, 8)  # this engine has no counter
        await governor.set_cap("grid", 10.0, "pool:commercial")
        await settle(remotes)
        assert (await governor.status())["unmetered"] == ["commercial"]
        assert controllers["commercial"].running_limits()["commercial/m"] == 8

    asyncio.run(scenario())


def test_a_cap_ends_at_its_time():
    make, controllers, remotes, clock = setup()

    async def scenario():
        governor = await make()
        await governor.report("commercial", "c1", 900.0, 1.0, 8)
        await governor.set_cap("evening", 100.0, "pool:commercial", until=clock[0] + 60)
        await settle(remotes)
        assert controllers["commercial"].running_limits()["commercial/m"] == 1
        clock[0] += 61
        await governor.report("commercial", "c1", 90.0, 1.0, 1)
        await governor._step()
        await settle(remotes)
        assert (await governor.status())["caps"] == []
        assert controllers["commercial"].running_limits()["commercial/m"] == 8

    asyncio.run(scenario())


def test_bad_caps_are_refused():
    make, _, _, clock = setup()

    async def scenario():
        governor = await make()
        with pytest.raises(ValueError, match="unknown scope"):
            await governor.set_cap("grid", 100.0, "domain:elsewhere")
        with pytest.raises(ValueError, match="past"):
            await governor.set_cap("grid", 100.0, "platform", until=clock[0] - 1)
        with pytest.raises(ValueError):
            await governor.set_cap("grid", -5.0, "platform")
        with pytest.raises(ValueError, match="cap name"):
            await governor.set_cap("a name {with} spaces " * 5, 100.0, "platform")

    asyncio.run(scenario())


def test_a_config_cap_holds_from_the_start():
    make, controllers, remotes, _ = setup(caps=[PowerCap(50.0, frozenset({"commercial"}), None, "standing")])

    async def scenario():
        governor = await make()
        await governor.report("commercial", "c1", 500.0, 1.0, 8)
        await governor._step()
        await settle(remotes)
        [cap] = (await governor.status())["caps"]
        assert cap["from_config"] and cap["binding"]
        assert controllers["commercial"].running_limits()["commercial/m"] == 1

    asyncio.run(scenario())
