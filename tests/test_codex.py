"""The real Codex CLI (npm ``@openai/codex``) through the gateway, offline against the mock upstream: a text turn
and a shell tool round trip through a Responses, an Anthropic and a Chat upstream.

Codex is installed by :func:`codex` into ``build/codex/<version>`` (never globally) with npm; without npm or
when npm cannot fetch it, the tests are skipped with the reason. Each run gets a temporary ``CODEX_HOME`` whose
``config.toml`` names the gateway as a model provider with ``wire_api = "responses"``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mock_upstream.content import DEFAULT_TEXT, SHELL_OUTPUT
from tests.npm_tools import npm_tool
from tests.servers import ProxyThread, provider_config

VERSION = "0.171.0"
CACHE = Path(__file__).resolve().parent.parent / "build" / "codex" / VERSION
MODELS = {"responses": "gpt-5-codex", "anthropic": "claude-sonnet-4-5", "openai": "gpt-4o"}


@pytest.fixture(scope="module")
def codex() -> Path:
    """The ``codex`` executable, installed once into :data:`CACHE`."""
    return npm_tool(f"@openai/codex@{VERSION}", "codex", CACHE, 300)


@pytest.fixture(scope="module")
def gateway(mock: Any) -> Iterator[ProxyThread]:
    config = provider_config(mock.url)
    config["providers"] = {"responses": {"format": "responses", "base_url": mock.url + "/v1",
                                         "api_key": "sk-resp-upstream", "models": ["gpt-5*"]}, **config["providers"]}
    with ProxyThread(config) as server:
        yield server


def run_codex(codex: Path, gateway: ProxyThread, tmp_path: Path, model: str, content: str) -> str:
    """``codex exec`` with the gateway as its provider; the mock answers with ``x-mock-content: content``."""
    home = tmp_path / "codex-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(f'''
model = "{model}"
model_provider = "ccproxy"
[model_providers.ccproxy]
name = "ccproxy"
base_url = "{gateway.url}/v1"
wire_api = "responses"
env_key = "CCPROXY_TEST_KEY"
http_headers = {{ "x-mock-content" = "{content}" }}
''')
    env = {**os.environ, "CODEX_HOME": str(home), "CCPROXY_TEST_KEY": "client-key", "NO_COLOR": "1"}
    done = subprocess.run([str(codex), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                           "say hi"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("kind", MODELS)
def test_codex_text_turn_and_shell_round_trip(codex: Path, gateway: ProxyThread, upstream: Any, kind: str,
                                              tmp_path: Path) -> None:
    """``upstream``: the session's mock with fresh statistics (tests/conftest.py)."""
    assert DEFAULT_TEXT in run_codex(codex, gateway, tmp_path / "text", MODELS[kind], "text")
    [turn] = upstream.requests
    assert turn.path == {"responses": "/v1/responses", "anthropic": "/v1/messages",
                         "openai": "/v1/chat/completions"}[kind]
    if kind == "responses":  # what Codex sends, as it sent it
        sent = turn.json()
        assert sent["stream"] is True and sent["store"] is False and turn.header("originator") == "codex_exec"
        assert turn.header("authorization") == "Bearer sk-resp-upstream"

    upstream.reset_stats()
    out = run_codex(codex, gateway, tmp_path / "shell", MODELS[kind], "shell")
    assert DEFAULT_TEXT in out
    call, answer = upstream.requests  # the model's call, then Codex's result of running it
    assert "exec_command" in call.body.decode()
    sent = answer.json()
    if kind == "responses":
        result = [i for i in sent["input"] if i.get("type") == "function_call_output"][-1]["output"]
    elif kind == "anthropic":
        result = json.dumps(sent["messages"][-1]["content"])
    else:
        result = sent["messages"][-1]["content"]
    assert SHELL_OUTPUT in json.dumps(result)
