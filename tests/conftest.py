"""Shared fixtures: a mock upstream and the proxy, each on a real socket."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.mock_upstream import MockUpstreamThread
from tests.servers import ProxyThread, provider_config, reserved_port

# `make test` draws the same examples on every run, so a run passes or fails on the code alone;
# `make fuzz` (HYPOTHESIS_PROFILE=explore) draws new ones each time, to look for what these miss.
settings.register_profile("ci",
                          suppress_health_check=list(HealthCheck))
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def mock() -> Iterator[MockUpstreamThread]:
    with MockUpstreamThread() as upstream:
        yield upstream


@pytest.fixture
def upstream(mock: MockUpstreamThread) -> MockUpstreamThread:
    """The session's mock with fresh statistics.

    The counters are zeroed once no response of an earlier test is still being written: the mock
    counts a response's end (say, the disconnect of a proxy that timed out) on its own thread, and
    on a loaded machine that can come after the test that caused it returned; zeroed before it,
    the count would land in this test's statistics.
    """
    assert mock.wait_for(lambda m: m.active_streams == 0), "a response of an earlier test never ended"
    mock.reset_stats()
    return mock


@pytest.fixture(scope="module")
def proxy(mock: MockUpstreamThread) -> Iterator[ProxyThread]:
    """The proxy with the default test config (both providers on the mock)."""
    with ProxyThread(provider_config(mock.url)) as server:
        yield server


@pytest.fixture
def make_proxy(mock: MockUpstreamThread) -> Iterator[Any]:
    """Start a proxy with ``provider_config(mock.url, **overrides)`` and optional plugins."""
    started: list[ProxyThread] = []

    def make(config: dict[str, Any] | None = None, plugins: list[tuple[str, object]] = (), **overrides: Any) -> ProxyThread:
        server = ProxyThread(config or provider_config(mock.url, **overrides), plugins=plugins)
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def sanic_port() -> Iterator[int]:
    """A port held for a ``sanic`` subprocess until the test ends (see :func:`tests.servers.reserved_port`)."""
    with reserved_port() as port:
        yield port
