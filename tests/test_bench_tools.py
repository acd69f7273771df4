"""The investigation tools in bench/ keep working against the core they measure (they are not run by
``make test`` otherwise, and a hook that changed from async to plain once broke one silently)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gateway_overhead  # noqa: E402

from ccproxy_core.config import StateSettings


def test_gateway_overhead_measures_the_memory_backend() -> None:
    assert asyncio.run(gateway_overhead.per_request(StateSettings(), 50)) > 0
