"""Shared fixtures: a mock upstream and the proxy, each on a real socket."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.gateway_helpers import RedisServer
from tests.mock_upstream import MockUpstreamThread
from tests.servers import ROOT, ProxyThread, provider_config, reserved_port

EXAMPLE_PLUGIN = ROOT / "examples" / "ccproxy-example-plugin"


def example_plugin_site() -> Path:
    """A directory holding ``examples/ccproxy-example-plugin`` as pip installs it (entry point included).

    The tests prove that a separately installed plugin is found through its entry point; installed
    into ``.venv`` it would also load in ``make run``, so it goes into a directory of its own
    (``build/test-site/<hash of its files>``, reused until those change) that only the test run
    puts on ``sys.path`` and ``PYTHONPATH``.
    """
    sources = [EXAMPLE_PLUGIN / "pyproject.toml", *sorted((EXAMPLE_PLUGIN / "ccproxy_example_plugin").rglob("*.py"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    site = ROOT / "build" / "test-site" / digest
    if not site.is_dir():
        site.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(dir=site.parent))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
             "--target", str(fresh), str(EXAMPLE_PLUGIN)],
            check=True, capture_output=True, timeout=120,
        )
        try:
            fresh.rename(site)
        except OSError:  # another test run made it meanwhile
            shutil.rmtree(fresh)
    return site


# Before any test imports a plugin: this process and the servers it starts find the example plugin.
_site = str(example_plugin_site())
sys.path.insert(0, _site)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_site, os.environ.get("PYTHONPATH")]))

# `make test` draws the same examples on every run, so a run passes or fails on the code alone;
# `make fuzz` (HYPOTHESIS_PROFILE=explore) draws new ones each time, to look for what these miss.
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("explore", deadline=None, suppress_health_check=list(HealthCheck))
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


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    """A real Redis-protocol server (``tests.gateway_helpers.RedisServer``) for one test module."""
    with reserved_port() as port:
        server = RedisServer(port).start()
        try:
            yield server
        finally:
            server.stop()
