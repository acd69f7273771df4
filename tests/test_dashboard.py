"""The dashboard plugin in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Playwright for Python drives an installed Chromium through ``executable_path`` (no browser download) and
waits on the page's own DOM, which is what a person sees; the Chrome DevTools Protocol by hand would be
the same thing with a websocket client and our own waiting code. Skipped, with the reason, when no Chromium
is found (``CCPROXY_CHROMIUM`` names one elsewhere); ``.ci/run`` installs Debian's, so CI always runs it.

``python -m tests.test_dashboard PATH.png`` writes the README's screenshot from demo traffic.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ccproxy_core import hookimpl
from ccproxy_core.config import build_config
from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, ProxyThread, closed_port, provider_config

CHROMIUM = os.environ.get("CCPROXY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CLIENT_KEY = "sk-proxy-client-SECRET-dash"
ADMIN_KEY = "sk-proxy-admin-SECRET-dash"
PROMPT = "a prompt the dashboard must never show"


def launch(playwright: Any) -> Any:
    # --no-sandbox: CI runs as root, where Chromium refuses its sandbox.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium found (install Debian's chromium, or set CCPROXY_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def dashboard(mock: Any) -> Iterator[ProxyThread]:
    config = provider_config(mock.url)
    # A named key: the auth plugin records its name (ctx.client_key), which the page shows.
    config["plugins"] = {"auth": {"keys": [{"name": "team-a", "key": CLIENT_KEY, "budget_usd": 5}],
                                  "admin_keys": [ADMIN_KEY]}}
    with ProxyThread(config) as server:
        yield server


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A new page on ``url`` and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    return page, problems


def log_in(page: Any, key: str) -> None:
    page.wait_for_selector("#login.show", timeout=5000)
    page.fill("#key", key)
    page.click("#login button")


def test_admin_key_required(browser: Any, dashboard: ProxyThread) -> None:
    assert httpx.get(dashboard.url + "/dashboard/events").status_code == 401
    assert httpx.get(dashboard.url + "/dashboard/events", headers={"x-api-key": CLIENT_KEY}).status_code == 401
    page, problems = open_page(browser, dashboard.url + "/dashboard")
    log_in(page, CLIENT_KEY)  # a client key is not an admin key
    page.wait_for_selector("#login-error:has-text('refused')", timeout=5000)
    assert page.is_hidden("#main")
    log_in(page, ADMIN_KEY)
    page.wait_for_selector("#main", state="visible", timeout=5000)
    page.wait_for_selector("#status:has-text('worker')", timeout=5000)
    # The failed attempts are 401s the page expects; nothing else may complain.
    page.close()
    assert [p for p in problems if "401" not in p] == []


def test_request_and_stream_show_live(browser: Any, dashboard: ProxyThread) -> None:
    page, problems = open_page(browser, dashboard.url + "/dashboard")
    log_in(page, ADMIN_KEY)
    page.wait_for_selector("#status:has-text('worker')", timeout=5000)
    assert page.text_content("#inflight") == "0"

    body = {**ANTHROPIC_BODY, "model": "claude-dash-1", "stream": False,
            "messages": [{"role": "user", "content": PROMPT}]}
    sent = time.monotonic()
    answer = httpx.post(dashboard.url + "/v1/messages", json=body, headers={"x-api-key": CLIENT_KEY})
    assert answer.status_code == 200
    page.wait_for_selector("#recent td:has-text('claude-dash-1')", timeout=2000)
    page.wait_for_selector("#status:has-text('1 requests')", timeout=2000)
    assert time.monotonic() - sent < 2.5
    row = page.text_content("#recent tr:nth-child(2)")
    assert "team-a" in row and "anthropic" in row and "200" in row and "completed" in row
    assert "claude-dash-1" in page.text_content("#by-model") and "team-a" in page.text_content("#by-key")
    # The key's use beside its limits (the gateway's usage, as the usage route shows it).
    page.wait_for_selector("#budgets td:has-text('team-a')", timeout=2000)
    budget = page.text_content("#budgets tr:nth-child(2)")
    assert "/ $5.00" in budget and budget.startswith("team-a1")  # name, then 1 request (no rpm)

    # A stream in flight for ~2 s: it shows, then leaves.
    stream_body = {**OPENAI_BODY, "model": "gpt-dash-stream"}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-mock-delay": "400", "x-mock-events": "5"}
    done = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", dashboard.url + "/v1/chat/completions", json=stream_body, headers=headers) as r:
            r.read()
        done.set()

    threading.Thread(target=stream, daemon=True).start()
    page.wait_for_selector("#streams td:has-text('gpt-dash-stream')", timeout=2000)
    assert page.text_content("#inflight") == "1"
    assert done.wait(10)
    page.wait_for_function("document.getElementById('inflight').textContent === '0'", timeout=2000)
    page.wait_for_selector("#recent td:has-text('gpt-dash-stream')", timeout=2000)

    # The filter narrows the table; nothing secret is on the page.
    page.fill("#filter", "gpt-dash")
    assert "claude-dash-1" not in page.text_content("#recent")
    html = page.content()
    assert CLIENT_KEY not in html and ADMIN_KEY not in html and PROMPT not in html
    page.close()
    assert problems == []


# -- the README's screenshot -------------------------------------------------------------------


class _Demo:
    """Demo traffic's key names, as the auth plugin records them."""

    names = ("alice", "ci-bot", "team-a")

    @hookimpl
    def ccproxy_request_received(self, ctx: Any) -> None:
        ctx.client_key = self.names[hash(ctx.request_id) % 3]


def screenshot(path: str) -> None:
    """Serve the bundled config (the offline demo providers), send demo traffic, photograph the page."""
    from playwright.sync_api import sync_playwright

    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "config.yaml")) as f:
        config = yaml.safe_load(f)
    config["plugins"] = {"usage": {"prices": {"demo*": {"input": 3.0, "output": 15.0}}}}
    config["providers"]["flaky"] = {"format": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                                    "requires_key": False, "models": ["demo-fallback"], "fallbacks": ["demo"]}
    with ProxyThread(config, plugins=[("demo-keys", _Demo())]) as server, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server.url + "/dashboard")
        threads = []
        for i in range(24):
            route, body = ("/v1/chat/completions", {**OPENAI_BODY, "model": "demo-gpt"}) if i % 3 == 0 else \
                ("/v1/messages", {**ANTHROPIC_BODY, "model": "demo", "stream": i % 2 == 0})
            if i % 8 == 7:
                body = {**body, "model": "claude-unknown"}  # no key for it: an error
            if i % 8 == 5:
                body = {**body, "model": "demo-fallback"}  # flaky refuses the connection: demo answers
            t = threading.Thread(target=lambda r=route, b=body: httpx.post(server.url + r, json=b, timeout=30))
            t.start()
            threads.append(t)
            time.sleep(0.15)
        # A push with streams in flight (one more stream, so that there is one).
        t = threading.Thread(target=lambda: httpx.post(server.url + "/v1/messages", timeout=30,
                                                       json={**ANTHROPIC_BODY, "model": "demo"}))
        t.start()
        threads.append(t)
        page.wait_for_function("document.getElementById('inflight').textContent !== '0'", timeout=5000)
        page.screenshot(path=path, full_page=True)
        for t in threads:
            t.join()
        browser.close()


if __name__ == "__main__":
    screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")


# -- without a browser ----------------------------------------------------------------------


def test_disabled_dashboard_has_no_route(mock: Any) -> None:
    config = provider_config(mock.url)
    config["plugins"] = {"disabled": ["dashboard"]}
    with ProxyThread(config) as server:
        assert httpx.get(server.url + "/dashboard").status_code == 404
        assert "dashboard" not in {name for name, _, _ in server.app.ctx.plugins.impls("ccproxy_stream_end")}


def test_keys_without_admin_keys_refuse_the_data(mock: Any) -> None:
    config = provider_config(mock.url)
    config["plugins"] = {"auth": {"keys": [CLIENT_KEY]}}
    with ProxyThread(config) as server:
        assert httpx.get(server.url + "/dashboard").status_code == 200  # the page holds no data
        refused = httpx.get(server.url + "/dashboard/events", headers={"x-api-key": CLIENT_KEY})
        assert refused.status_code == 403 and "admin_keys" in refused.text


def test_everything_kept_is_bounded() -> None:
    from ccproxy_core import COMPLETED, RequestContext, Usage
    from ccproxy_plugins.dashboard.aggregate import BOUNDS, MAX_LABELS, Aggregate
    from ccproxy_plugins.metrics import OTHER
    from ccproxy_plugins.metrics import MAX_MODEL_LABELS

    aggregate = Aggregate(build_config(provider_config("http://127.0.0.1:9"), "test"), recent=10)
    for i in range(1200):
        ctx = RequestContext(f"r{i}", "POST", "/v1/messages", "anthropic", model=f"claude-{i}",
                             provider="anthropic", status=200, outcome=COMPLETED, duration=0.01,
                             usage=Usage(input_tokens=1, output_tokens=2), client_key=f"k{i}")
        aggregate.started(ctx)
        aggregate.ended(ctx)
    snap = aggregate.snapshot()
    assert len(snap["recent"]) == 10 and len(aggregate.durations) == len(BOUNDS) + 1
    assert len(snap["by"]["model"]) == MAX_MODEL_LABELS + 1 and len(snap["by"]["key"]) == MAX_LABELS + 1
    assert {r["name"] for r in snap["by"]["key"]} >= {OTHER} and snap["in_flight"]["count"] == 0
    assert snap["totals"]["requests"] == 1200 and snap["totals"]["output_tokens"] == 2 * 1200


def test_ended_counts_the_error_kind_of_every_request() -> None:
    """Over random requests, usual and failed, the kind ``Aggregate.ended`` keeps (the recent row's, the
    error counts) is ``error_kind``'s, and every stream that started leaves the in-flight table when it
    ends (``ended`` skips the in-flight table while it is empty)."""
    import random
    from collections import Counter

    from ccproxy_core import CLIENT_DISCONNECTED, COMPLETED, REJECTED, UPSTREAM_ERROR, RequestContext
    from ccproxy_core.errors import InvalidRequest, ProxyError
    from ccproxy_plugins.dashboard.aggregate import Aggregate, error_kind

    aggregate = Aggregate(build_config(provider_config("http://127.0.0.1:9"), "test"), recent=1)
    rng = random.Random(17)
    kinds: Counter[str] = Counter()
    for i in range(2000):
        error = rng.choice((None, None, InvalidRequest("no"), ProxyError("down", error_kind="connect")))
        ctx = RequestContext(f"r{i}", "POST", "/v1/messages", "anthropic", stream=rng.random() < 0.5,
                             status=rng.choice((None, 200, 399, 400, 429, 500)), error=error,
                             outcome=rng.choice((COMPLETED, COMPLETED, CLIENT_DISCONNECTED, UPSTREAM_ERROR, REJECTED, None)),
                             inband_error=rng.choice((None, None, "overloaded")))
        if ctx.stream:
            aggregate.started(ctx)
        aggregate.ended(ctx)
        kind = error_kind(ctx)
        assert aggregate.recent[-1][6] == kind
        kinds[kind] += kind is not None
    assert aggregate.errors == +kinds and aggregate.in_flight == {}
    assert None in kinds and len(kinds) > 5  # usual and failed requests both ran


def test_admin_keys_alone_guard_only_admin_routes(mock: Any) -> None:
    config = provider_config(mock.url)
    config["plugins"] = {"auth": {"admin_keys": [ADMIN_KEY]}}
    with ProxyThread(config) as server:
        assert httpx.get(server.url + "/dashboard/events").status_code == 401
        assert httpx.get(server.url + "/v1/models").status_code == 200
        assert httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False}).status_code == 200


def test_a_stopping_worker_ends_the_event_stream(mock: Any, tmp_path: Any, sanic_port: int) -> None:
    """A real ``sanic app.app``: on SIGTERM the event stream ends cleanly at once, instead of holding the
    worker for the whole ``shutdown_grace`` (30 s here) like an unfinished response."""
    import signal
    import subprocess

    import yaml

    from tests.servers import ROOT

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(provider_config(mock.url)))
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(sanic_port), "--single-process"],
        cwd=ROOT, env={**os.environ, "CCPROXY_CONFIG": str(path)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{sanic_port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.stream("GET", url + "/dashboard/events", timeout=10) as events:
            lines = events.iter_lines()
            assert next(line for line in lines if line).startswith("data: {")
            proc.send_signal(signal.SIGTERM)
            assert [line for line in lines if line.startswith("data:")] == []  # a clean end, well within 10 s
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
