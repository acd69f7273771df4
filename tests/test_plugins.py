"""Plugins end to end: discovery, settings, isolation, async implementations, every hook.

Every test drives real requests over a real socket through the proxy (``tests/servers.py``)
to the mock upstream, with small test plugins. Tests named ``test_<hook name>_...`` are the
per-hook tests that ``tests/test_hook_docs.py`` requires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import types
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ccproxy_core import (
    AuthenticationError,
    ConfigError,
    PluginSettings,
    create_app,
    hookimpl,
)
from ccproxy_core.config import build_config
from ccproxy_core.plugins import Plugins
from tests.servers import ANTHROPIC_BODY, DISTRIBUTION, OPENAI_BODY, PATHS, ProxyThread, ROOT, provider_config




def post(url: str, body: dict, headers: dict | None = None, path: str = "/v1/messages") -> httpx.Response:
    return httpx.post(url + path, json=body, headers=headers or {}, timeout=10)


def config_with(mock_url: str, *names: str, **settings: Any) -> dict[str, Any]:
    """The mock providers with only ``providers`` and the named plugins enabled (hermetic)."""
    return provider_config(mock_url, plugins={"enabled": ["providers", *names], **settings})


@pytest.fixture
def serve(make_proxy, mock):
    """``serve(name=plugin, ..., settings={...})``: a proxy with these plugins and nothing else."""

    def start(settings: dict[str, Any] | None = None, **plugins: object) -> ProxyThread:
        return make_proxy(config_with(mock.url, *plugins, **(settings or {})), plugins=list(plugins.items()))

    return start


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Ends:
    """Collects the final context of each request (``ccproxy_stream_end``), async."""

    def __init__(self) -> None:
        self.ctxs: list[Any] = []

    @hookimpl
    async def ccproxy_stream_end(self, ctx):
        await asyncio.sleep(0)
        self.ctxs.append(ctx)

    def last(self) -> Any:
        wait_for(lambda: self.ctxs)
        return self.ctxs[-1]


# -- discovery and /plugins ------------------------------------------------------------------


def test_first_party_plugins_are_listed_with_their_distribution(make_proxy, mock):
    server = make_proxy(provider_config(mock.url))
    listed = {p["name"]: p for p in httpx.get(server.url + "/plugins").json()}
    for name in ("providers", "demo"):
        assert listed[name]["distribution"] == DISTRIBUTION, listed[name]
        assert listed[name]["version"] and listed[name]["enabled"] is True
    assert "ccproxy_request_headers" in listed["providers"]["hooks"]
    assert listed["demo"]["hooks"] == ["ccproxy_configure", "ccproxy_upstream_transport"]


def test_plugins_route_lists_distribution_version_hooks_and_disabled(make_proxy, mock):
    ends = Ends()
    config = provider_config(mock.url, plugins={"disabled": ["demo"]})
    server = make_proxy(config, plugins=[("ends", ends)])
    listed = {p["name"]: p for p in httpx.get(server.url + "/plugins").json()}
    assert listed["demo"]["enabled"] is False and listed["demo"]["distribution"] == DISTRIBUTION
    assert listed["ends"] == {
        "name": "ends",
        "distribution": None,
        "version": None,
        "enabled": True,
        "hooks": ["ccproxy_stream_end"],
        "errors": {},
    }
    assert listed["providers"]["enabled"] is True


def test_enabled_list_loads_only_those(make_proxy, mock):
    server = make_proxy(config_with(mock.url))
    listed = {p["name"]: p["enabled"] for p in httpx.get(server.url + "/plugins").json()}
    assert listed["providers"] is True and listed["demo"] is False
    assert post(server.url, {**ANTHROPIC_BODY, "stream": False}).status_code == 200


def test_first_party_plugins_come_from_code_in_a_checkout_never_installed(monkeypatch):
    import importlib.metadata

    from ccproxy_core import plugins as loading
    from ccproxy_core.plugins import DEFAULT_PLUGINS

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [])  # nothing installed at all
    loading._distribution.cache_clear()  # which distribution holds a package: cached per process
    try:
        loaded = Plugins(build_config({"plugins": {"disabled": ["demo"]}}, "x"))
    finally:
        loading._distribution.cache_clear()
    assert loaded.info["providers"].distribution is None
    names = [module.rpartition(".")[2] for module in DEFAULT_PLUGINS]
    assert list(loaded.info) == names
    assert loaded.pm.is_blocked("demo") and loaded.pm.get_plugin("demo") is None  # disabled: pluggy's block list
    assert all(loaded.pm.get_plugin(name) is not None for name in names if name != "demo")
    assert loaded.implemented("ccproxy_request_headers") and loaded.implemented("ccproxy_request_adapter")
    assert loaded.pm.list_plugin_distinfo() == []


def test_installed_plugins_come_through_pluggys_entry_point_loader(make_proxy, mock):
    assert _example_installed(), "run `make install`: it installs examples/ccproxy-example-plugin"
    server = make_proxy(provider_config(mock.url, plugins={"example": {"header_value": "x"}}))
    loaded = server.app.ctx.plugins
    assert [(dist.project_name, plugin.__name__) for plugin, dist in loaded.pm.list_plugin_distinfo()] == [
        ("ccproxy-example-plugin", "ccproxy_example_plugin")]
    assert loaded.pm.is_blocked("example") is False
    disabled = make_proxy(provider_config(mock.url, plugins={"disabled": ["example"]}))
    assert disabled.app.ctx.plugins.pm.is_blocked("example")


# -- loading errors: one line, naming the plugin ---------------------------------------------


def build(plugins: dict[str, object], settings: dict[str, Any] | None = None, path: str = "test.yaml") -> Plugins:
    config = build_config({"plugins": settings or {}}, path)
    return Plugins(config, list(plugins.items()), entry_points=False)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def test_unknown_plugin_name_in_config_is_an_error():
    with pytest.raises(ConfigError) as exc:
        build({}, {"nosuch": {"a": 1}})
    assert one_line(exc) == "test.yaml: plugins.nosuch: no installed plugin is called 'nosuch' (installed: none)"
    with pytest.raises(ConfigError, match="plugins.ghost: no installed plugin"):
        build({}, {"disabled": ["ghost"]})


def test_misspelt_hook_name_names_plugin_and_hook():
    class Typo:
        @hookimpl
        def ccproxy_strem_chunk(self, ctx, chunk): ...

    with pytest.raises(ConfigError) as exc:
        build({"typo": Typo()})
    assert one_line(exc) == "plugin 'typo': unknown hook 'ccproxy_strem_chunk'; did you mean 'ccproxy_stream_chunk'?"


def test_undecorated_ccproxy_function_is_a_hook_and_checked():
    class Plain:
        def ccproxy_stream_start(self, ctx): ...

        def ccproxy_stream_ennd(self, ctx): ...

    with pytest.raises(ConfigError, match="unknown hook 'ccproxy_stream_ennd'; did you mean 'ccproxy_stream_end'"):
        build({"plain": Plain()})
    del Plain.ccproxy_stream_ennd
    assert build({"plain": Plain()}).implemented("ccproxy_stream_start")


def test_argument_the_hook_does_not_pass_is_an_error():
    class Wrong:
        @hookimpl
        def ccproxy_stream_chunk(self, ctx, data): ...

    with pytest.raises(ConfigError) as exc:
        build({"wrong": Wrong()})
    assert one_line(exc) == (
        "plugin 'wrong': ccproxy_stream_chunk() takes data, which ccproxy_stream_chunk does not pass "
        "(it passes: ctx, chunk)"
    )


def test_wrappers_of_async_implementations_and_async_build_time_hooks_are_refused():
    class Wrapper:
        @hookimpl(wrapper=True)
        def ccproxy_stream_start(self, ctx):
            yield

    class AsyncStart:
        async def ccproxy_stream_start(self, ctx): ...

    assert build({"w": Wrapper()}).implemented("ccproxy_stream_start")  # wrappers are pluggy's own
    with pytest.raises(ConfigError, match="plugin 'w': ccproxy_stream_start is a wrapper") as exc:
        build({"w": Wrapper(), "a": AsyncStart()})
    assert "plugin 'a' implements it with async def" in one_line(exc)

    class AsyncRoutes:
        @hookimpl
        async def ccproxy_register_routes(self, app): ...

    with pytest.raises(ConfigError) as exc:
        build({"a": AsyncRoutes()})
    assert "plugin 'a': ccproxy_register_routes must be a plain function, not async" in one_line(exc)


class FakeEntryPoint:
    """An entry point of the ``ccproxy`` group, as pluggy's ``load_setuptools_entrypoints`` reads it."""

    group = "ccproxy"

    def __init__(self, name: str, load: Any = object) -> None:
        self.name, self.load = name, load


class FakeDistribution:
    """An installed distribution holding ``entry_points`` (``name`` None: no metadata name)."""

    def __init__(self, name: str | None, *entry_points: FakeEntryPoint) -> None:
        self.metadata = {"Name": name} if name else {}
        self.version = "1.0"
        self.entry_points = list(entry_points)

    def read_text(self, filename: str) -> None:
        return None


def test_two_plugins_with_one_name_and_import_failure(monkeypatch):
    import importlib.metadata

    two = [FakeDistribution("ccproxy-a", FakeEntryPoint("dup")), FakeDistribution("ccproxy-b", FakeEntryPoint("dup"))]
    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "distributions", lambda: two)
        with pytest.raises(ConfigError) as exc:
            Plugins(build_config({}, "x"))
    assert one_line(exc) == "two installed plugins are called 'dup' (ccproxy-a and ccproxy-b); uninstall one of them"
    with monkeypatch.context() as patch:  # a first-party name is taken too
        patch.setattr(importlib.metadata, "distributions", lambda: [FakeDistribution("ccproxy-x", FakeEntryPoint("auth"))])
        with pytest.raises(ConfigError, match=r"two installed plugins are called 'auth' \(.* and ccproxy-x\)"):
            Plugins(build_config({}, "x"))

    class P:
        pass

    with pytest.raises(ConfigError, match="two plugins passed to create_app are called 'p'"):
        Plugins(build_config({}, "x"), [("p", P()), ("p", P())], entry_points=False)
    double = Plugins(build_config({}, "x"), [("demo", P())])  # replaces the installed demo plugin
    assert double.info["demo"].distribution is None and not double.implemented("ccproxy_upstream_transport")

    def broken():
        raise ImportError("No module named 'missing_dependency'")

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [FakeDistribution(None, FakeEntryPoint("broken", broken))])
    with pytest.raises(ConfigError) as exc:
        Plugins(build_config({}, "x"))
    assert one_line(exc).startswith("plugin 'broken' (registered in code) failed to import: ImportError(")


# -- settings: ccproxy_configure -----------------------------------------------------------------


@dataclass
class ThresholdSettings:
    token: str
    threshold: int = 3
    ratio: float = 0.5
    verbose: bool = False
    tags: list[str] | None = None


class Configured:
    """Reads and checks its settings the documented way."""

    def __init__(self) -> None:
        self.settings: ThresholdSettings | None = None
        self.seen: PluginSettings | None = None

    @hookimpl
    def ccproxy_configure(self, config, settings):
        self.seen = settings
        self.settings = settings.load(ThresholdSettings)
        if self.settings.threshold > 10:
            raise settings.error("threshold", "must be at most 10")


def test_ccproxy_configure_gets_each_plugin_its_own_settings(monkeypatch):
    monkeypatch.setenv("MY_PLUGIN_TOKEN", "s3cret")
    monkeypatch.setenv("MY_THRESHOLD", "7")
    first, second = Configured(), Configured()
    settings = {
        "first": {"token": "${MY_PLUGIN_TOKEN}", "threshold": "${MY_THRESHOLD}", "verbose": "yes", "tags": ["a"]},
        "second": {"token": "other"},
    }
    build({"first": first, "second": second}, settings)
    assert first.settings == ThresholdSettings(token="s3cret", threshold=7, verbose=True, tags=["a"])
    assert second.settings == ThresholdSettings(token="other")
    assert first.seen is not None and first.seen.name == "first" and dict(first.seen)["token"] == "s3cret"


@pytest.mark.parametrize(
    "block,message",
    [
        ({"token": "t", "threshold": "many"}, "plugins.mine.threshold: expected a whole number, got str 'many'"),
        ({"token": "t", "treshold": 3}, "plugins.mine.treshold: unknown setting (plugin 'mine' takes: token, "),
        ({"threshold": 3}, "plugins.mine.token: required setting is missing"),
        ({"token": "t", "threshold": 11}, "plugins.mine.threshold: must be at most 10"),
        ({"token": "t", "verbose": "maybe"}, "plugins.mine.verbose: expected true or false, got str 'maybe'"),
        ({"token": ["x"]}, "plugins.mine.token: expected a string, got list"),
        ({"token": "t", "tags": "a"}, "plugins.mine.tags: expected a list, got str 'a'"),
    ],
)
def test_ccproxy_configure_refuses_bad_settings_with_one_line(block, message):
    with pytest.raises(ConfigError) as exc:
        build({"mine": Configured()}, {"mine": block}, path="/etc/ccproxy.yaml")
    assert one_line(exc).startswith("/etc/ccproxy.yaml: " + message), str(exc.value)


def test_ccproxy_configure_other_failures_name_plugin(monkeypatch):
    class Plain:
        @hookimpl
        def ccproxy_configure(self, settings):
            raise ConfigError("needs a token")

    class Crashing:
        @hookimpl
        def ccproxy_configure(self, settings):
            raise KeyError("token")

    with pytest.raises(ConfigError) as exc:
        build({"plain": Plain()})
    assert one_line(exc) == "test.yaml: plugins.plain: needs a token"
    with pytest.raises(ConfigError) as exc:
        build({"crashing": Crashing()})
    assert one_line(exc) == "test.yaml: plugins.crashing: plugin 'crashing' failed in ccproxy_configure: KeyError('token')"
    with pytest.raises(ConfigError, match=r"plugins.mine: expected a mapping of settings"):
        build({"mine": Configured()}, {"mine": [1, 2]})
    monkeypatch.delenv("UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"plugins.mine.token: environment variable UNSET_TOKEN is not set"):
        build({"mine": Configured()}, {"mine": {"token": "${UNSET_TOKEN}"}})


def test_ccproxy_configure_error_stops_create_app_and_import_app(tmp_path, mock):
    config = provider_config(mock.url, plugins={"example": {"header_value": "ok", "colour": "blue"}})
    with pytest.raises(ConfigError, match=r"test-config: plugins.example.colour: unknown setting"):
        create_app(build_config(config, "test-config"))
    path = tmp_path / "ccproxy.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    result = subprocess.run(
        [sys.executable, "-c", "import app"],
        cwd=ROOT,
        env={**os.environ, "CCPROXY_CONFIG": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ccproxy: configuration error: {path}: plugins.example.colour: unknown setting")


# -- service lifecycle -----------------------------------------------------------------------------


class Lifecycle:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def ccproxy_register_routes(self, app, config):
        from sanic import response

        @app.get("/lifecycle")
        async def lifecycle(request):
            return response.json({"started": request.app.ctx.lifecycle_started, "calls": self.calls})

        self.calls.append("routes")

    @hookimpl
    async def ccproxy_startup(self, app, config):
        await asyncio.sleep(0.01)
        app.ctx.lifecycle_started = len(config.providers)
        self.calls.append("startup")

    @hookimpl
    async def ccproxy_shutdown(self, app):
        await asyncio.sleep(0.01)
        self.calls.append("shutdown")


def test_ccproxy_register_routes_ccproxy_startup_and_ccproxy_shutdown(mock):
    plugin = Lifecycle()
    server = ProxyThread(config_with(mock.url, "life"), plugins=[("life", plugin)])
    assert plugin.calls == ["routes"]  # while the app is built, before any worker
    with server:
        body = httpx.get(server.url + "/lifecycle").json()
        assert body == {"started": 2, "calls": ["routes", "startup"]}
    assert plugin.calls == ["routes", "startup", "shutdown"]


def test_ccproxy_register_routes_failure_is_a_config_error(mock):
    class Clash:
        @hookimpl
        def ccproxy_register_routes(self, app):
            raise RuntimeError("route /x exists")

    with pytest.raises(ConfigError) as exc:
        create_app(build_config(config_with(mock.url, "clash"), "t"), plugins=[("clash", Clash())])
    assert one_line(exc) == "plugin 'clash' failed in ccproxy_register_routes: RuntimeError('route /x exists')"


def test_ccproxy_startup_config_error_stops_the_worker(mock):
    class Refuses:
        @hookimpl
        async def ccproxy_startup(self, config):
            raise ConfigError("plugins.refuses: cannot reach the licence server")

    server = ProxyThread(config_with(mock.url, "refuses"), plugins=[("refuses", Refuses())])
    with pytest.raises(ConfigError, match="cannot reach the licence server"):
        server.start()
    server.stop()


def test_ccproxy_upstream_transport_async_supplies_the_transport(serve, upstream):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"from": "plugin transport"}, headers={"request-id": "req_local"})

    class Local:
        @hookimpl
        async def ccproxy_upstream_transport(self, provider):
            await asyncio.sleep(0)
            return httpx.MockTransport(handler) if provider.name == "openai" else None

    server = serve(local=Local())
    r = post(server.url, {**OPENAI_BODY, "stream": False}, path="/v1/chat/completions")
    assert r.json() == {"from": "plugin transport"} and seen == ["/v1/chat/completions"]
    assert post(server.url, {**ANTHROPIC_BODY, "stream": False}).json()["type"] == "message"  # the mock


# -- request phase ------------------------------------------------------------------------------------


class Gate:
    @hookimpl
    async def ccproxy_request_received(self, ctx, request):
        await asyncio.sleep(0)
        if request.headers.get("x-proxy-key") != "letmein":
            raise AuthenticationError("a valid x-proxy-key is required")
        if ctx.body.get("crash"):
            raise RuntimeError("bug in the gate")
        ctx.state["gate"] = "passed"


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_ccproxy_request_received_async_can_refuse_in_client_dialect(serve, upstream, dialect):
    ends = Ends()
    server = serve(gate=Gate(), ends=ends)
    path, body = PATHS[dialect]
    before = len(upstream.requests)
    r = post(server.url, body, path=path)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["message"] == "a valid x-proxy-key is required"
    assert error["type"] == "authentication_error"
    assert (r.json().get("type") == "error") is (dialect == "anthropic")
    assert ends.last().outcome == "rejected"
    r = post(server.url, {**body, "crash": True}, {"x-proxy-key": "letmein"}, path=path)
    assert r.status_code == 500 and "plugin 'gate' failed in ccproxy_request_received" in r.json()["error"]["message"]
    assert len(upstream.requests) == before
    r = post(server.url, body, {"x-proxy-key": "letmein"}, path=path)
    assert r.status_code == 200
    wait_for(lambda: len(ends.ctxs) == 3)
    assert ends.ctxs[-1].state["gate"] == "passed"


class Translator:
    """A tiny OpenAI -> Anthropic request translator (the first-party one is not loaded)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    async def ccproxy_request_adapter(self, ctx, body):
        self.calls += 1
        await asyncio.sleep(0)
        if (ctx.client_dialect, ctx.upstream_dialect) != ("openai", "anthropic"):
            return None
        return {"model": ctx.model, "max_tokens": 32, "messages": body["messages"]}


class Declines:
    @hookimpl(tryfirst=True)
    async def ccproxy_request_adapter(self, ctx, body):
        return None  # an async implementation returning None does not win the firstresult hook


def test_ccproxy_request_adapter_async_first_result_translates(serve, upstream):
    translator = Translator()
    server = serve(translator=translator, declines=Declines())
    r = post(server.url, {**OPENAI_BODY, "model": "claude-sonnet-4-5", "stream": False}, path="/v1/chat/completions")
    assert r.status_code == 200
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.json() == {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": OPENAI_BODY["messages"]}
    assert translator.calls == 1


def test_ccproxy_request_adapter_none_means_a_clear_400(serve):
    server = serve(declines=Declines())
    r = post(server.url, {**OPENAI_BODY, "model": "claude-sonnet-4-5"}, path="/v1/chat/completions")
    assert r.status_code == 400 and "no plugin translates" in r.json()["error"]["message"]


def test_ccproxy_request_body_async_reserialises_only_when_changed(serve, upstream):
    class Body:
        @hookimpl
        async def ccproxy_request_body(self, ctx, body):
            await asyncio.sleep(0)
            if "temperature" in body:
                return None  # looked, changed nothing: the client's bytes go upstream
            body["temperature"] = 0
            return True

    server = serve(body=Body())
    raw = json.dumps({**ANTHROPIC_BODY, "stream": False}, indent=3).encode()
    httpx.post(server.url + "/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert upstream.requests[-1].json() == {**ANTHROPIC_BODY, "stream": False, "temperature": 0}
    raw = json.dumps({**ANTHROPIC_BODY, "stream": False, "temperature": 1}, indent=3).encode()
    httpx.post(server.url + "/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert upstream.requests[-1].body == raw


@pytest.mark.parametrize("marked", [True, False])
def test_ccproxy_request_body_top_level_only_is_spliced_into_the_clients_bytes(serve, upstream, marked):
    """Implementations marked ``top_level_only``: the members they set or add go into the client's bytes (a new
    one first, a set one in its place); a removal, or an unmarked implementation, re-serialises the body."""

    class Body:
        @hookimpl
        def ccproxy_request_body(self, ctx, body):
            if body.get("metadata") == {"user_id": "drop"}:
                del body["metadata"]
            else:
                body["temperature"], body["top_k"] = 0, 3
            return True

        ccproxy_request_body.top_level_only = marked

    server = serve(body=Body())
    text = '{ "model":"claude-sonnet-4-5",\n "temperature" : 1.0, "max_tokens":5, "messages":[{"role":"user","content":"h\\u00e9"}]}'
    raw = text.encode()
    assert httpx.post(server.url + "/v1/messages", content=raw, headers={"content-type": "application/json"}).status_code == 200
    want = {**json.loads(raw), "temperature": 0, "top_k": 3}
    assert upstream.requests[-1].json() == want
    if marked:
        assert upstream.requests[-1].body == ('{"top_k":3, "model":"claude-sonnet-4-5",\n "temperature" : 0, "max_tokens":5, '
                                              '"messages":[{"role":"user","content":"h\\u00e9"}]}').encode()
    else:
        assert upstream.requests[-1].body == json.dumps(want, ensure_ascii=False).encode()
    dropped = json.dumps({**json.loads(raw), "metadata": {"user_id": "drop"}}, indent=1).encode()
    assert httpx.post(server.url + "/v1/messages", content=dropped, headers={"content-type": "application/json"}).status_code == 200
    assert upstream.requests[-1].body == json.dumps(json.loads(raw), ensure_ascii=False).encode()


def test_an_alias_replaces_only_the_model_value_in_the_clients_bytes(make_proxy, mock, upstream):
    """Same dialect through an alias: the client's bytes go upstream with the value of the top-level ``model``
    replaced (spacing, key order, escapes and a nested ``model`` kept); a body hook that changes the body
    gets it re-serialised, alias included."""

    class Body:
        @hookimpl
        def ccproxy_request_body(self, ctx, body):
            if "temperature" in body:
                return None
            body["temperature"] = 0
            return True

    config = config_with(mock.url, "body")
    config["models"] = {"team-sonnet": {"model": "claude-sonnet-4-5"}}
    server = make_proxy(config, plugins=[("body", Body())])
    raw = ('{ "metadata" : {"model": "team-sonnet"}, "model" :\t"team-sonnet" ,"max_tokens":5, "temperature": 1,\n'
           ' "messages": [{"role": "user", "content": "caf\u00e9 \u2014 \\"model\\": x"}], "stream": false}').encode()
    r = httpx.post(server.url + "/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].body == raw.replace(b':\t"team-sonnet"', b':\t"claude-sonnet-4-5"')
    r = httpx.post(server.url + "/v1/messages", content=raw.replace(b' "temperature": 1,', b""),
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].json() == {**json.loads(raw), "model": "claude-sonnet-4-5", "temperature": 0}


def test_an_openai_sdk_body_through_an_alias_keeps_its_bytes_with_usage_asked(make_proxy, mock, upstream):
    """The OpenAI SDK's order (``model`` after ``messages``), through an alias, streamed without usage: the
    client's bytes go upstream with the model's value replaced and ``stream_options`` put first, the
    conversation's bytes untouched (escapes, non-ASCII text, a nested ``model``)."""
    config = config_with(mock.url, "usage")
    config["models"] = {"fast": {"model": "gpt-4.1-mini"}}
    server = make_proxy(config)
    raw = ('{"messages": [{"role": "system", "content": "caf\u00e9 \u2014 \\"model\\": \\"fast\\""}, '
           '{"role": "user", "content": "hi \\u00e9"}], "model": "fast", "stream": true, '
           '"tools": [{"type": "function", "function": {"name": "t", "parameters": {"properties": {"model": {}}}}}]}').encode()
    with httpx.stream("POST", server.url + "/v1/chat/completions", content=raw,
                      headers={"content-type": "application/json"}, timeout=10) as r:
        assert r.status_code == 200 and b"[DONE]" in r.read()
    assert upstream.requests[-1].body == b'{"stream_options":{"include_usage": true},' + raw[1:].replace(
        b'"model": "fast"', b'"model": "gpt-4.1-mini"')


def test_ccproxy_request_headers_async_changes_upstream_headers(serve, upstream):
    class Headers:
        @hookimpl
        async def ccproxy_request_headers(self, ctx, headers):
            await asyncio.sleep(0)
            headers["x-team"] = "search"
            headers.pop("x-internal", None)

    server = serve(headers=Headers())
    post(server.url, {**ANTHROPIC_BODY, "stream": False}, {"x-internal": "1"})
    seen = upstream.requests[-1]
    assert seen.header("x-team") == "search" and seen.header("x-internal") is None
    assert seen.header("x-api-key") == "sk-ant-upstream-SECRET"  # providers still ran


# -- response phase -----------------------------------------------------------------------------------


def test_ccproxy_upstream_attempt_async_sees_each_try(make_proxy, mock, upstream):
    class Attempts:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int | None, bool]] = []

        @hookimpl
        async def ccproxy_upstream_attempt(self, ctx, attempt):
            await asyncio.sleep(0)
            self.seen.append((attempt.provider, attempt.status, attempt is ctx.attempts[-1]))

    attempts = Attempts()
    config = config_with(mock.url, "attempts")
    config["retries"] = {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}
    server = make_proxy(config, plugins=[("attempts", attempts)])
    assert post(server.url, ANTHROPIC_BODY).status_code == 200
    assert attempts.seen == [("anthropic", 200, True)]
    attempts.seen.clear()
    assert post(server.url, ANTHROPIC_BODY, {"x-mock-status": "500"}).status_code == 500
    assert attempts.seen == [("anthropic", 500, True), ("anthropic", 500, True)]  # tried, then retried


class Replace:
    """A response adapter: replaces one word (events are never split by the default mock)."""

    def __init__(self, old: bytes, new: bytes, fail_at: int | None = None) -> None:
        self.old, self.new, self.fail_at, self.fed = old, new, fail_at, 0

    def feed(self, data: bytes) -> bytes:
        self.fed += 1
        if self.fail_at is not None and self.fed >= self.fail_at:
            raise ValueError("adapter bug")
        return data.replace(self.old, self.new)

    def finish(self) -> bytes:
        return b""


def test_ccproxy_response_adapter_async_adapters_are_chained(serve, upstream):
    class First:
        @hookimpl(tryfirst=True)
        async def ccproxy_response_adapter(self, ctx):
            await asyncio.sleep(0)
            ctx.response_headers["x-adapted"] = "yes"
            return Replace(b"Hello", b"Howdy")

    class Second:
        @hookimpl
        def ccproxy_response_adapter(self, ctx):
            return Replace(b"Howdy", b"HOWDY")

    server = serve(first=First(), second=Second())
    direct = httpx.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10).content
    r = post(server.url, ANTHROPIC_BODY)
    assert r.headers["x-adapted"] == "yes" and "content-length" not in r.headers
    assert b"HOWDY" in r.content and b"Hello" not in r.content and b"Hello" in direct
    assert r.content.count(b"\n\n") == direct.count(b"\n\n")
    r = post(server.url, {**ANTHROPIC_BODY, "stream": False})
    assert r.json()["content"][0]["text"].startswith("HOWDY")


def test_ccproxy_response_adapter_failing_before_the_head_is_a_500_in_dialect(serve, upstream):
    class Refuses:
        @hookimpl
        async def ccproxy_response_adapter(self, ctx):
            raise LookupError("no adapter for you")

    server = serve(refuses=Refuses())
    r = post(server.url, ANTHROPIC_BODY)
    assert r.status_code == 500 and r.json()["type"] == "error"
    assert "plugin 'refuses' failed in ccproxy_response_adapter" in r.json()["error"]["message"]


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_ccproxy_response_adapter_failing_mid_stream_ends_with_error_in_client_dialect(serve, upstream, dialect):
    class Breaks:
        @hookimpl
        def ccproxy_response_adapter(self, ctx):
            return Replace(b"Hello", b"Howdy", fail_at=3)

    ends = Ends()
    server = serve(breaks=Breaks(), ends=ends)
    path, body = PATHS[dialect]
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):  # visibly broken, not a clean end
        paced = {"x-mock-delay": "5"}  # one event per read: the third read fails
        with httpx.stream("POST", server.url + path, json=body, headers=paced, timeout=10) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
    last = received.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    if dialect == "anthropic":
        assert last.startswith(b"event: error\ndata: ")
        payload = json.loads(last.split(b"data: ", 1)[1])
        assert payload["type"] == "error" and payload["error"]["type"] == "api_error"
    else:
        assert last.startswith(b"data: {") and b"[DONE]" not in received
        payload = json.loads(last[len(b"data: "):])
    assert "plugin 'breaks' failed" in json.dumps(payload)
    ctx = ends.last()
    assert ctx.error is not None and "breaks" in ctx.error.message


def test_ccproxy_upstream_headers_async_changes_headers_and_status(serve, upstream):
    class Head:
        @hookimpl
        async def ccproxy_upstream_headers(self, ctx, status, headers):
            await asyncio.sleep(0)
            headers["x-upstream-status"] = str(status)
            if status == 529:
                ctx.status = 503
                headers["retry-after"] = "1"

    server = serve(head=Head())
    r = post(server.url, ANTHROPIC_BODY)
    assert r.status_code == 200 and r.headers["x-upstream-status"] == "200"
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-status": "529"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["x-upstream-status"] == "529"


def test_ccproxy_stream_start_async_runs_once_before_the_first_byte(serve, upstream):
    class Start:
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        @hookimpl
        async def ccproxy_stream_start(self, ctx):
            await asyncio.sleep(0)
            self.seen.append((ctx.status, ctx.bytes_sent))

    start = Start()
    server = serve(start=start)
    post(server.url, ANTHROPIC_BODY)
    post(server.url, {**OPENAI_BODY, "stream": False}, path="/v1/chat/completions")
    assert start.seen == [(200, 0), (200, 0)]


class Chunks:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.chunks: list[bytes] = []

    @hookimpl
    async def ccproxy_stream_chunk(self, ctx, chunk):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.chunks.append(chunk)


def test_ccproxy_stream_chunk_async_sees_every_write_before_it_goes(serve, upstream):
    chunks = Chunks()
    server = serve(chunks=chunks)
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-events": "5", "x-mock-delay": "5"})
    assert b"".join(chunks.chunks) == r.content and len(chunks.chunks) >= 5


def _timed_stream(url: str, headers: dict[str, str]) -> tuple[float, list[float]]:
    arrivals: list[float] = []
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers, timeout=20) as r:
        for _ in r.iter_raw():
            arrivals.append(time.perf_counter())
    return time.perf_counter() - t0, arrivals


def test_ccproxy_stream_chunk_slow_observer_delays_by_its_own_run_time_per_call(serve, upstream):
    """An async observer sleeping 50 ms holds each write for 50 ms, in line, and for nothing more.

    Calls run one after another before the bytes they observe are written (never gathered or
    queued), so a stream pays (calls x 50 ms) at most; while it waits, the upstream's next events
    pile up and go out in the next write, so there are never more calls than upstream reads.
    """
    fast = serve(ends=Ends())
    slow, ends = Chunks(delay=0.05), Ends()
    server = serve(slow=slow, ends=ends)

    # A fast upstream (an event every 10 ms): the observer is the bottleneck.
    headers = {"x-mock-events": "10", "x-mock-delay": "10"}
    baseline, _ = _timed_stream(fast.url, headers)
    elapsed, arrivals = _timed_stream(server.url, headers)
    calls = len(slow.chunks)
    assert calls == ends.last().chunks_sent >= 2
    assert elapsed >= calls * 0.05, (elapsed, calls)  # in line: the calls' sleeps never overlap
    assert elapsed <= baseline + calls * 0.05 + 0.4, (elapsed, baseline, calls)
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
    assert gaps[len(gaps) // 2] >= 0.045, gaps  # each write waited for its own call

    # A slower upstream (an event every 80 ms): each write is 50 ms late, the delay does not add up.
    slow.chunks.clear()
    headers = {"x-mock-events": "5", "x-mock-delay": "80"}
    baseline, _ = _timed_stream(fast.url, headers)
    elapsed, _ = _timed_stream(server.url, headers)
    calls = len(slow.chunks)
    assert calls >= 8
    assert elapsed - baseline <= 0.3 < calls * 0.05, (elapsed, baseline, calls)  # not calls x 50 ms


def test_ccproxy_stream_event_async_whole_events_across_split_reads(serve, upstream):
    class Events:
        def __init__(self) -> None:
            self.events: list[Any] = []

        @hookimpl
        async def ccproxy_stream_event(self, ctx, event):
            await asyncio.sleep(0)
            self.events.append((ctx.upstream_dialect, event))

    events = Events()
    server = serve(events=events)
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-split": "1", "x-mock-events": "3"})
    names = [e.event for _, e in events.events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3 and len(names) == r.content.count(b"\n\n")
    assert all(json.loads(e.data)["type"] == e.event for _, e in events.events)
    events.events.clear()
    r = post(server.url, OPENAI_BODY, {"x-mock-split": "1"}, path="/v1/chat/completions")
    assert [e.data for _, e in events.events][-1] == "[DONE]"
    assert {d for d, _ in events.events} == {"openai"}


def test_ccproxy_response_body_async_gets_the_whole_decoded_body(serve, upstream):
    class Body:
        def __init__(self) -> None:
            self.bodies: list[bytes] = []

        @hookimpl
        async def ccproxy_response_body(self, ctx, body):
            await asyncio.sleep(0)
            self.bodies.append(body)

    plugin = Body()
    server = serve(body=plugin)
    r = post(server.url, {**ANTHROPIC_BODY, "stream": False}, {"x-mock-gzip": "1", "accept-encoding": "gzip"})
    assert plugin.bodies == [r.content] and json.loads(plugin.bodies[0])["type"] == "message"
    post(server.url, ANTHROPIC_BODY)  # streams are not collected
    assert len(plugin.bodies) == 1


def test_ccproxy_stream_error_async_reports_failures_before_and_after_head(serve, upstream):
    class Errors:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int]] = []

        @hookimpl
        async def ccproxy_stream_error(self, ctx, error):
            await asyncio.sleep(0)
            self.seen.append((ctx.outcome, error.status))

    errors = Errors()
    server = serve(errors=errors)
    with pytest.raises(httpx.RemoteProtocolError):
        post(server.url, ANTHROPIC_BODY, {"x-mock-drop-after": "2"})
    wait_for(lambda: errors.seen)
    assert errors.seen == [("upstream_error", 502)]
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-reset": "1"})
    assert r.status_code == 502
    wait_for(lambda: len(errors.seen) == 2)


def test_ccproxy_stream_end_async_exactly_once_per_request(serve, upstream):
    ends = Ends()
    server = serve(ends=ends)
    post(server.url, ANTHROPIC_BODY)
    post(server.url, {**OPENAI_BODY, "stream": False}, path="/v1/chat/completions")
    post(server.url, {"model": "no-such-model"})
    wait_for(lambda: len(ends.ctxs) == 3)
    time.sleep(0.1)
    assert [c.outcome for c in ends.ctxs] == ["completed", "completed", "rejected"]
    assert ends.ctxs[0].stream and ends.ctxs[0].events_sent > 0 and ends.ctxs[0].duration > 0


# -- isolation and ordering -----------------------------------------------------------------------------


class Faulty:
    """Raises in every observer hook."""

    @hookimpl
    def ccproxy_upstream_headers(self, ctx):
        raise RuntimeError("headers bug")

    @hookimpl
    async def ccproxy_stream_start(self, ctx):
        raise RuntimeError("start bug")

    @hookimpl
    def ccproxy_stream_chunk(self, ctx, chunk):
        raise RuntimeError("chunk bug")

    @hookimpl
    async def ccproxy_stream_event(self, ctx, event):
        raise RuntimeError("event bug")

    @hookimpl
    def ccproxy_stream_error(self, ctx, error):
        raise RuntimeError("error bug")

    @hookimpl
    async def ccproxy_stream_end(self, ctx):
        raise RuntimeError("end bug")


def test_observer_exceptions_are_isolated_and_logged_once_with_the_plugin_name(serve, upstream, caplog):
    chunks, ends = Chunks(), Ends()
    server = serve(faulty=Faulty(), chunks=chunks, ends=ends)
    direct = httpx.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10).content
    with caplog.at_level(logging.ERROR, logger="ccproxy"):
        for _ in range(3):
            r = post(server.url, ANTHROPIC_BODY)
            assert r.status_code == 200 and r.content.count(b"\n\n") == direct.count(b"\n\n")
        with pytest.raises(httpx.RemoteProtocolError):
            post(server.url, ANTHROPIC_BODY, {"x-mock-drop-after": "1"})
        wait_for(lambda: len(ends.ctxs) == 4)
    assert b"".join(chunks.chunks).count(b"event: message_stop") == 3  # the other plugin saw everything
    records = [r for r in caplog.records if "faulty" in r.getMessage()]
    hooks = Counter(r.args[1] for r in records)
    expected = ["ccproxy_upstream_headers", "ccproxy_stream_start", "ccproxy_stream_chunk",
                "ccproxy_stream_event", "ccproxy_stream_error", "ccproxy_stream_end"]
    assert hooks == Counter(expected), hooks  # once each, however often it failed
    assert all(r.exc_info for r in records)
    listed = {p["name"]: p for p in httpx.get(server.url + "/plugins").json()}
    assert listed["faulty"]["errors"]["ccproxy_stream_end"] == 4
    assert listed["faulty"]["errors"]["ccproxy_stream_chunk"] > 4


def test_sync_and_async_implementations_run_in_order(serve, upstream):
    order: list[str] = []

    class A:
        @hookimpl(tryfirst=True)
        async def ccproxy_stream_start(self, ctx):
            await asyncio.sleep(0.02)
            order.append("a")

    class B:
        @hookimpl
        def ccproxy_stream_start(self, ctx):
            order.append("b")

    class C:
        @hookimpl(trylast=True)
        async def ccproxy_stream_start(self, ctx):
            order.append("c")

    server = serve(c=C(), b=B(), a=A())
    post(server.url, ANTHROPIC_BODY)
    assert order == ["a", "b", "c"]


def test_wrapper_hookimpl_wraps_the_other_implementations(serve, upstream):
    """A pluggy ``wrapper=True`` implementation runs around the others and sees their result."""
    seen: list[Any] = []

    class Inner:
        @hookimpl
        def ccproxy_upstream_headers(self, headers):
            headers["x-inner"] = "1"

    class Wrapper:
        @hookimpl(wrapper=True)
        def ccproxy_upstream_headers(self, headers):
            assert "x-inner" not in headers  # before the others
            result = yield
            headers["x-wrapped"] = headers["x-inner"]  # after them
            return result

        @hookimpl(wrapper=True)
        def ccproxy_request_headers(self, ctx, headers):
            yield
            seen.append(headers.get("x-api-key"))  # providers has added the provider's key

    server = serve(inner=Inner(), wrapper=Wrapper())
    r = post(server.url, ANTHROPIC_BODY)
    assert r.status_code == 200 and r.headers["x-wrapped"] == "1"
    assert seen == ["sk-ant-upstream-SECRET"]


def test_pluggy_tracing_and_hook_call_monitoring_see_every_hook_call(serve, upstream):
    ends = Ends()
    server = serve(ends=ends)
    pm = server.app.ctx.plugins.pm
    traced: list[str] = []
    monitored: list[tuple[str, list[str]]] = []
    pm.trace.root.setwriter(traced.append)
    undo_trace = pm.enable_tracing()
    undo_monitor = pm.add_hookcall_monitoring(
        lambda hook, impls, kwargs: monitored.append((hook, [i.plugin_name for i in impls])),
        lambda outcome, hook, impls, kwargs: None,
    )
    try:
        post(server.url, ANTHROPIC_BODY)
        ends.last()
    finally:
        undo_monitor()
        undo_trace()
    # Every hook some plugin implements; one nobody implements is skipped before pluggy (the core's cost guard).
    assert ("ccproxy_request_headers", ["providers"]) in monitored
    assert ("ccproxy_stream_end", ["ends"]) in monitored
    assert "ccproxy_stream_start" not in [hook for hook, _ in monitored]
    assert any("ccproxy_stream_end" in line for line in traced), traced


# -- per-app state ---------------------------------------------------------------------------------------


def _requests_counted(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "ccproxy_requests_total")


def test_ccproxy_configure_returns_a_per_app_object_whose_methods_are_hooks():
    class PerApp:
        def __init__(self, greeting: str) -> None:
            self.greeting, self.ends = greeting, 0

        @hookimpl
        def ccproxy_stream_end(self, ctx):
            self.ends += 1
            raise RuntimeError("counted under the plugin's name")

    module = types.ModuleType("per_app_plugin")

    @hookimpl
    def ccproxy_configure(settings):
        return PerApp(settings.get("greeting", "hi"))

    module.ccproxy_configure = ccproxy_configure
    one = build({"mine": module}, {"mine": {"greeting": "one"}})
    two = build({"mine": module}, {"mine": {"greeting": "two"}})
    first, second = one.pm.get_plugin("mine.app"), two.pm.get_plugin("mine.app")
    assert (first.greeting, second.greeting) == ("one", "two")
    assert one.info["mine"].hooks == ["ccproxy_configure", "ccproxy_stream_end"]
    asyncio.run(one.notify("ccproxy_stream_end", ctx=None))
    assert (first.ends, second.ends) == (1, 0) and one.errors == Counter({("mine", "ccproxy_stream_end"): 1})


def test_hook_calls_pass_the_named_arguments_and_await_each_result_before_the_next():
    """Without a wrapper, tracing or monitoring the core calls the implementations itself, as pluggy
    would: each gets the arguments it names, in pluggy's order; what one returns is awaited before the
    next runs, and an observer whose awaitable fails is isolated as if it had raised."""
    seen: list[Any] = []

    class Early:
        @hookimpl(tryfirst=True)
        def ccproxy_upstream_headers(self, headers, ctx):  # a subset, in another order
            seen.append(("early", headers, ctx))

            async def fails() -> None:
                seen.append("awaited")
                raise RuntimeError("observer bug")

            return fails()

    class Late:
        @hookimpl
        def ccproxy_upstream_headers(self, status):
            seen.append(("late", status))

        @hookimpl
        def ccproxy_request_body(self):  # no argument at all
            seen.append("body")
            return True

    loaded = build({"early": Early(), "late": Late()})
    asyncio.run(loaded.notify("ccproxy_upstream_headers", ctx="ctx", status=200, headers={"a": "b"}))
    assert seen == [("early", {"a": "b"}, "ctx"), "awaited", ("late", 200)]
    assert loaded.errors == Counter({("early", "ccproxy_upstream_headers"): 1})
    assert asyncio.run(loaded.call("ccproxy_request_body", ctx="ctx", body={})) == [True]


def test_two_apps_in_one_process_keep_their_own_plugin_state(make_proxy, mock, upstream, tmp_path):
    """metrics, health, access_log and usage keep per-app state (what ``ccproxy_configure`` returned)."""
    expensive = {"claude-*": {"input": 1000.0, "output": 1000.0}}
    a = make_proxy(provider_config(mock.url, plugins={"access_log": {"path": str(tmp_path / "a.log")},
                                                      "usage": {"prices": expensive}}))
    b = make_proxy(provider_config(mock.url, plugins={"access_log": {"path": str(tmp_path / "b.log")}}))
    for _ in range(2):
        assert post(a.url, {**ANTHROPIC_BODY, "stream": False}).status_code == 200
    assert post(b.url, {**ANTHROPIC_BODY, "stream": False}).status_code == 200
    wait_for(lambda: _requests_counted(a.url) == 2 and _requests_counted(b.url) == 1)
    wait_for(lambda: len((tmp_path / "a.log").read_text().splitlines()) == 2)
    wait_for(lambda: len((tmp_path / "b.log").read_text().splitlines()) == 1)
    a_lines = [json.loads(line) for line in (tmp_path / "a.log").read_text().splitlines()]
    b_line = json.loads((tmp_path / "b.log").read_text())
    usage = b_line["usage"]
    assert a_lines[0]["usage"] == usage
    tokens = usage["input_tokens"] + usage["output_tokens"] + usage["cache_read_input_tokens"]  # cache: input's price
    assert a_lines[0]["cost_usd"] == pytest.approx(tokens * 1000 / 1e6)
    assert b_line["cost_usd"] < a_lines[0]["cost_usd"] / 50  # the default table, not a's
    ready_a, ready_b = (httpx.get(s.url + "/health/ready").json() for s in (a, b))
    assert ready_a["providers"]["anthropic"]["last"]["request_id"] == a_lines[-1]["request_id"]
    assert ready_b["providers"]["anthropic"]["last"]["request_id"] == b_line["request_id"]
    listed = {p["name"]: p for p in httpx.get(a.url + "/plugins").json()}
    assert {"ccproxy_configure", "ccproxy_startup", "ccproxy_stream_end"} <= set(listed["metrics"]["hooks"])


# -- cost: no pluggy on the chunk path ------------------------------------------------------------------


def test_no_ccproxy_stream_chunk_implementation_means_no_plugin_call_per_chunk(serve, upstream, monkeypatch):
    ends = Ends()
    server = serve(ends=ends)
    plugins = server.app.ctx.plugins
    notified: list[str] = []
    real_run = plugins.run

    def recording_run(hook_name: str, /, **kwargs: Any) -> Any:
        notified.append(hook_name)
        return real_run(hook_name, **kwargs)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pluggy was called while serving a request")

    monkeypatch.setattr(plugins, "run", recording_run)
    # Every pluggy call of a hook goes through its HookCaller's _hookexec: trap the per-chunk ones.
    for name in ("ccproxy_stream_chunk", "ccproxy_stream_event"):
        monkeypatch.setattr(getattr(plugins.pm.hook, name), "_hookexec", forbidden)
    with pytest.raises(AssertionError, match="pluggy was called"):
        plugins.pm.hook.ccproxy_stream_chunk(ctx=None, chunk=b"")  # the trap works
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-events": "20", "x-mock-delay": "2"})
    assert r.status_code == 200 and r.content.count(b"event: content_block_delta") == 20
    ctx = ends.last()
    # Events, not chunks: under load the kernel may hand two of the mock's writes over in one read.
    assert ctx.events_sent >= 20 and ctx.chunks_sent >= 1 and ctx.outcome == "completed"
    assert "ccproxy_stream_chunk" not in notified and "ccproxy_stream_event" not in notified
    assert notified.count("ccproxy_stream_end") == 1


# -- the example plugin: a separately installed package --------------------------------------------------


def _example_installed() -> bool:
    import importlib.metadata

    return any(ep.name == "example" for ep in importlib.metadata.entry_points(group="ccproxy"))


def test_example_plugin_is_discovered_configured_from_yaml_and_fires(make_proxy, mock, upstream, monkeypatch, tmp_path):
    assert _example_installed(), "tests/conftest.py installs examples/ccproxy-example-plugin for the test run"
    monkeypatch.setenv("EXAMPLE_HEADER", "from-yaml")
    path = tmp_path / "ccproxy.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            providers:
              anthropic: {{format: anthropic, base_url: "{mock.url}", api_key: k, models: ["claude-*"]}}
              openai: {{format: openai, base_url: "{mock.url}/v1", api_key: k, models: ["gpt-*"]}}
            plugins:
              example:
                header_value: ${{EXAMPLE_HEADER}}
            """
        )
    )
    import yaml

    server = make_proxy(yaml.safe_load(path.read_text()))  # no plugins= : only entry points
    listed = {p["name"]: p for p in httpx.get(server.url + "/plugins").json()}
    assert listed["example"]["distribution"] == "ccproxy-example-plugin"
    assert listed["example"]["version"] == "0.1.0" and listed["example"]["enabled"] is True
    assert "ccproxy_stream_event" in listed["example"]["hooks"]
    before = httpx.get(server.url + "/example/stats").json()
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-events": "4"})
    assert r.headers["x-example"] == "from-yaml"
    o = post(server.url, OPENAI_BODY, path="/v1/chat/completions")
    assert o.headers["x-example"] == "from-yaml"
    wait_for(lambda: httpx.get(server.url + "/example/stats").json()["requests"] == before["requests"] + 2)
    stats = httpx.get(server.url + "/example/stats").json()
    assert stats["by_type"]["content_block_delta"] - before["by_type"].get("content_block_delta", 0) == 4
    anthropic = sum(stats["by_type"].values()) - stats["by_type"].get("message", 0)
    assert anthropic - (before["events"] - before["by_type"].get("message", 0)) == r.content.count(b"\n\n")
    # OpenAI events have no name; another plugin may ask the upstream for a usage chunk the client never sees.
    assert stats["by_type"]["message"] - before["by_type"].get("message", 0) >= o.content.count(b"\n\n")


def test_example_plugin_disabled_or_misconfigured(make_proxy, mock):
    assert _example_installed()
    server = make_proxy(provider_config(mock.url, plugins={"disabled": ["example"], "example": {"header_value": "x"}}))
    assert "x-example" not in post(server.url, {**ANTHROPIC_BODY, "stream": False}).headers
    assert httpx.get(server.url + "/example/stats").status_code == 404
    with pytest.raises(ConfigError, match=r"plugins.example.header_name: not a valid header name: 'x y'"):
        create_app(build_config(provider_config(mock.url, plugins={"example": {"header_name": "x y"}}), "t"))


# -- Plugins.run: the hot path's loop, beside the general one --------------------------------------------


def _random_plugins(seed: int, log: list[Any]) -> dict[str, object]:
    """1-4 plugins on an observer hook and a deciding one, each implementation taking a random subset
    of the hook's arguments and returning None, a value or an awaitable, or raising."""
    import random

    rng = random.Random(seed)
    plugins: dict[str, object] = {}
    for n in range(rng.randint(1, 4)):
        name = f"p{n}"
        namespace: dict[str, Any] = {}
        for hook, args in (("ccproxy_upstream_headers", ("ctx", "status", "headers")),
                           ("ccproxy_request_headers", ("ctx", "headers"))):
            if rng.random() < 0.2:
                continue
            picked = rng.sample(args, rng.randint(0, len(args)))
            behaviour = rng.choice(["none", "none", "value", "awaitable", "awaitable-raises", "raises"])

            def impl(*values: Any, _name=name, _hook=hook, _picked=picked, _behaviour=behaviour) -> Any:
                log.append((_name, _hook, dict(zip(_picked, values))))
                if _behaviour == "raises":
                    raise RuntimeError(_name)
                if _behaviour == "value":
                    return _name
                if _behaviour.startswith("awaitable"):
                    async def later() -> Any:
                        log.append((_name, "awaited"))
                        if _behaviour == "awaitable-raises":
                            raise RuntimeError(_name)
                        return _name
                    return later()
                return None

            # The signature pluggy reads the arguments from: exactly the picked names.
            source = f"def {hook}({', '.join(picked)}): return impl({', '.join(picked)})"
            scope: dict[str, Any] = {"impl": impl}
            exec(source, scope)
            namespace[hook] = staticmethod(scope[hook])
        plugins[name] = type(name, (), namespace)()
    return plugins


@pytest.mark.parametrize("seed", range(80))
# Through pluggy, an implementation that raises in a deciding hook leaves what earlier ones returned unawaited.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_run_calls_the_implementations_as_notify_call_and_pluggy_do(seed):
    """``run`` (the hot path, its own loop) against ``notify`` / ``call`` (the general loop) and the call
    through pluggy and the adapters (a no-op monitor turns the shortcut off): the same implementations
    run in the same order with the same arguments, awaitables awaited in turn, the same failures."""
    ctx, headers = object(), {"a": "b"}
    calls = {"ccproxy_upstream_headers": {"ctx": ctx, "status": 200, "headers": headers},
             "ccproxy_request_headers": {"ctx": ctx, "headers": headers}}

    def outcome(way: str) -> tuple[list[Any], Any, Counter]:
        log: list[Any] = []
        loaded = build(_random_plugins(seed, log))
        undo = loaded.pm.add_hookcall_monitoring(lambda *a: None, lambda *a: None) if way == "pluggy" else None
        raised = []
        for hook, kwargs in calls.items():
            async def one() -> None:
                if way == "run":
                    pending = loaded.run(hook, **kwargs)
                    if pending is not None:
                        await pending
                elif hook == "ccproxy_upstream_headers":
                    await loaded.notify(hook, **kwargs)
                else:
                    await loaded.call(hook, **kwargs)
            try:
                asyncio.run(one())
            except Exception as exc:
                raised.append((type(exc), str(exc)))
        if undo is not None:
            undo()
        return log, raised, loaded.errors

    run_log, run_raised, run_errors = outcome("run")
    general = outcome("general")
    pluggy_log, pluggy_raised, pluggy_errors = outcome("pluggy")
    assert (run_log, run_raised, run_errors) == general
    # pluggy's loop calls every implementation before the core awaits what they returned: the same
    # only when nothing returned an awaitable.
    if not any(entry[1] == "awaited" for entry in run_log + pluggy_log):
        assert (run_log, run_raised, run_errors) == (pluggy_log, pluggy_raised, pluggy_errors)
