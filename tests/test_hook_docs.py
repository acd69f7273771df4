"""Meta-tests that keep docs/plugins.md and the tests true to ``ccproxy_core.hookspecs``.

* every hook is documented under its exact signature (derived with ``inspect.signature``);
* every hook has a test named after it somewhere under tests/;
* every hook's example in the docs is a working plugin: they all run together in one proxy;
* the quick-start package in the docs, built by pip into a directory, is found and works.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ccproxy_core import hookspecs
from tests.servers import ProxyThread, provider_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
FENCE = re.compile(r"^([ ]*)```([^\n]*)\n(.*?)^[ ]*```", re.S | re.M)


def hook_specs() -> dict[str, Any]:
    marker = hookspecs.PROJECT_NAME + "_spec"
    return {name: f for name, f in vars(hookspecs).items() if name.startswith("ccproxy_") and hasattr(f, marker)}


def signature_line(name: str, func: Any) -> str:
    """``def NAME(arg: Type, ...) -> Return:`` as written in hookspecs.py (annotations are strings there)."""
    sig = inspect.signature(func)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {name}({params}) -> {sig.return_annotation}:"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(2).strip(), textwrap.dedent(m.group(3))) for m in FENCE.finditer(text)]


def sections(text: str) -> dict[str, str]:
    """The text under each ``#### ccproxy_...`` heading, up to the next heading."""
    parts = re.split(r"^(#{2,4} .*)$", text, flags=re.M)
    out: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2]):
        match = re.fullmatch(r"#### (ccproxy_\w+)", heading.strip())
        if match:
            out[match.group(1)] = body
    return out


def test_hookspecs_exist():
    assert len(hook_specs()) >= 15


def test_every_hook_is_documented_under_its_exact_signature():
    doc = DOC.read_text()
    lines = {line.strip() for _, body in code_blocks(doc) for line in body.splitlines()}
    missing = [signature_line(n, f) for n, f in hook_specs().items() if signature_line(n, f) not in lines]
    assert not missing, "docs/plugins.md lacks these signature lines (in a code block):\n" + "\n".join(missing)
    documented = set(sections(doc))
    assert documented == set(hook_specs()), f"sections without a hookspec: {documented - set(hook_specs())}"


def test_every_hook_section_states_firstresult_and_has_an_example():
    for name, body in sections(DOC.read_text()).items():
        firstresult = hook_specs()[name].ccproxy_spec["firstresult"]
        assert ("`firstresult`:" in body) is firstresult, f"{name}: say whether it is firstresult"
        examples = [b for info, b in code_blocks(body) if info == "python" and f"def {name}(" in b and "@hookimpl" in b]
        assert examples, f"{name}: no runnable example (a python block with @hookimpl def {name}(...))"


def test_every_hook_has_a_test_named_after_it():
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names |= {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.name.startswith("test_")}
    untested = sorted(hook for hook in hook_specs() if not any(hook in test for test in names))
    assert not untested, f"hooks without a test named after them: {untested}"


# -- the examples run ---------------------------------------------------------------------------------


def example_modules() -> list[tuple[str, types.ModuleType]]:
    """Each hook's example in docs/plugins.md, executed as a module of its own."""
    modules = []
    for name, body in sections(DOC.read_text()).items():
        for info, code in code_blocks(body):
            if info == "python" and f"def {name}(" in code and "@hookimpl" in code:
                module = types.ModuleType(f"doc_{name}")
                sys.modules[module.__name__] = module  # dataclasses and type hints look modules up
                exec(compile(code, f"docs/plugins.md#{name}", "exec"), module.__dict__)
                modules.append((f"doc_{name.removeprefix('ccproxy_')}", module))
    return modules


@pytest.fixture
def doc_modules():
    modules = example_modules()
    yield modules
    for _, module in modules:
        sys.modules.pop(module.__name__, None)


def test_ccproxy_hook_examples_from_the_docs_run_together_in_a_real_proxy(mock, capsys, doc_modules):
    modules = doc_modules
    assert len(modules) == len(hook_specs())
    config = provider_config(mock.url, plugins={"enabled": ["providers", *(n for n, _ in modules)]})
    with ProxyThread(config, plugins=modules) as server:
        anthropic = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(server.url + "/v1/messages", json={**anthropic, "stream": True}, timeout=10)
        assert r.status_code == 200 and r.headers["x-served-by"] == "ccproxy/anthropic"
        assert r.content.rstrip().endswith(b'{"type":"message_stop"}')
        r = httpx.post(server.url + "/v1/messages", json=anthropic, timeout=10)
        assert r.status_code == 200 and r.json()["type"] == "message"
        openai = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(server.url + "/v1/chat/completions", json={**openai, "stream": True}, timeout=10)
        assert r.status_code == 200 and r.content.rstrip().endswith(b"data: [DONE]")
        cross = {**openai, "model": "claude-sonnet-4-5"}  # the request_adapter example translates it
        r = httpx.post(server.url + "/v1/chat/completions", json=cross, timeout=10)
        assert r.status_code == 200
        assert mock.requests[-1].path == "/v1/messages" and mock.requests[-1].json()["max_tokens"] == 4096
        r = httpx.post(server.url + "/v1/messages", json={**anthropic, "max_tokens": 10**6}, timeout=10)
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
        assert httpx.get(server.url + "/hello/providers").json() == ["anthropic", "openai"]
        plugins = server.app.ctx.plugins
        assert not plugins.errors, plugins.errors  # no example raised
    assert '"outcome": "completed"' in capsys.readouterr().out  # the stream_end example's log line


def test_quickstart_package_from_the_docs_installs_and_runs(tmp_path, mock, monkeypatch):
    """The two files of the quick start, built and installed by pip, work as the docs say."""
    doc = DOC.read_text()
    package = tmp_path / "ccproxy-hello"
    package.mkdir()
    files = {}
    for info, body in code_blocks(doc):
        match = re.search(r'title="([^"]+)"', info)
        if match:
            (package / match.group(1)).write_text(body)
            files[match.group(1)] = body
    assert set(files) == {"pyproject.toml", "ccproxy_hello.py"}
    entry = tomllib.loads(files["pyproject.toml"])["project"]["entry-points"]["ccproxy"]
    assert entry == {"hello": "ccproxy_hello"}

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(package)],
        check=True, capture_output=True, timeout=120,
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yaml_block = next(body for info, body in code_blocks(doc) if info == "yaml" and "hello:" in body)
    monkeypatch.delenv("HELLO_GREETING", raising=False)
    config = provider_config(mock.url, plugins=yaml.safe_load(yaml_block)["plugins"])
    try:
        with ProxyThread(config) as server:  # found through its entry point only
            listed = {p["name"]: p for p in httpx.get(server.url + "/plugins").json()}
            assert listed["hello"]["distribution"] == "ccproxy-hello" and listed["hello"]["version"] == "0.1.0"
            assert listed["hello"]["hooks"] == [
                "ccproxy_configure", "ccproxy_request_received", "ccproxy_upstream_headers"]
            body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(server.url + "/v1/messages", json=body, timeout=10)
            assert r.status_code == 200 and r.headers["x-greeting"] == "hi there"
            r = httpx.post(server.url + "/v1/chat/completions", json={**body, "model": "gpt-4o", "max_tokens": 9000})
            assert r.status_code == 400 and "at most 8192" in r.json()["error"]["message"]
            assert "type" not in r.json()  # OpenAI's error shape for an OpenAI client
        bad = provider_config(mock.url, plugins={"hello": {"max_tokens": "lots"}})
        with pytest.raises(Exception, match=r"plugins.hello.max_tokens: expected a whole number, got str 'lots'"):
            ProxyThread(bad)
    finally:
        sys.modules.pop("ccproxy_hello", None)


def test_plugins_route_json_in_docs_matches_the_real_shape(mock):
    doc = DOC.read_text()
    sample = next(body for info, body in code_blocks(doc) if info == "json" and '"distribution"' in body)
    documented = json.loads(sample)[0]
    with ProxyThread(provider_config(mock.url)) as server:
        real = httpx.get(server.url + "/plugins").json()[0]
    assert set(documented) == set(real)


def test_loading_blocking_and_order_are_documented_as_done():
    """The discovery section names every first-party plugin in registration order, and pluggy's loader
    and block list, which is what ``Plugins`` uses."""
    from ccproxy_core import plugins

    doc = DOC.read_text()
    section = doc[doc.index("## How plugins are found"):doc.index("## Settings:")]
    names = [module.rpartition(".")[2] for module in plugins.DEFAULT_PLUGINS]
    positions = [section.index(f"`{name}`") for name in names]
    assert positions == sorted(positions), "list the first-party plugins in DEFAULT_PLUGINS order"
    source = inspect.getsource(plugins)
    for name in ("DEFAULT_PLUGINS", "load_setuptools_entrypoints", "set_blocked"):
        assert name in section and name in source, name


def test_observer_hooks_are_documented_as_isolated():
    from ccproxy_core.hookcalls import OBSERVER_HOOKS

    doc = DOC.read_text()
    rule = next(line for line in doc.split("\n- **") if line.startswith("Isolation.**"))
    documented = set(re.findall(r"`(ccproxy_\w+)`", rule.split("The other hooks")[0]))
    assert documented == OBSERVER_HOOKS
