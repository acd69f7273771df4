"""The investigation tools in bench/ keep working against the core they measure (they are not run by
``make test`` otherwise, and a hook that changed from async to plain once broke one silently)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gateway_overhead  # noqa: E402
import plugin_overhead  # noqa: E402

from ccproxy_core.config import StateSettings


def test_gateway_overhead_measures_the_memory_backend() -> None:
    assert asyncio.run(gateway_overhead.per_request(StateSettings(), 50)) > 0


def test_plugin_overhead_drives_every_scenario_through_the_core() -> None:
    """Each scenario's requests complete (``one`` checks the outcome) through ``Proxy.handle`` and the relay."""

    async def scenarios() -> None:
        for classes in plugin_overhead.SCENARIOS.values():
            upstream = plugin_overhead.Upstream()
            assert await plugin_overhead.cpu_per_request(plugin_overhead.build(classes, upstream), upstream, 3, 2) > 0

    asyncio.run(scenarios())
