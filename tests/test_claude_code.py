"""The real Claude Code CLI, offline, through the gateway: ``claude -p`` with its default model mapped
to the demo by an alias, a Bash tool round trip, in the Anthropic dialect and translated to Chat.

The npm package is installed by this test into ``build/claude-code/`` (never globally); without npm
or the registry the test is skipped with the reason. Bounded: one install of at most
:data:`INSTALL_TIMEOUT` seconds, each CLI run at most :data:`RUN_TIMEOUT` seconds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from ccproxy_core import hookimpl
from tests.npm_tools import npm_tool
from tests.servers import ROOT, ProxyThread

PACKAGE = "@anthropic-ai/claude-code@2.1.197"
#: The model ``claude -p`` asks for when none is given (this version, an API key, no settings).
DEFAULT_MODEL = "claude-opus-4-8"
CACHE = ROOT / "build" / "claude-code"
INSTALL_TIMEOUT = 240
RUN_TIMEOUT = 90


def _claude() -> Path:
    return npm_tool(PACKAGE, "claude", CACHE, INSTALL_TIMEOUT)


class Recorder:
    """What Claude Code sent: method, path, query, headers (credentials redacted), body fields."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    @hookimpl
    def ccproxy_register_routes(self, app, config):
        @app.on_request
        async def record(request):
            headers = {k: ("<redacted>" if k in ("x-api-key", "authorization") else v) for k, v in request.headers.items()}
            self.seen.append({"method": request.method, "path": request.path, "query": request.query_string,
                              "headers": headers})

    @hookimpl
    def ccproxy_request_received(self, ctx, request):
        self.seen[-1]["body"] = ctx.body


def _run(claude: Path, server: ProxyThread, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": server.url,
           "ANTHROPIC_API_KEY": "sk-client-unused", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}
    return subprocess.run([str(claude), "-p", *args], env=env, cwd=home, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


@pytest.mark.parametrize("target", ["demo", "demo-gpt"])
def test_claude_code_bash_round_trip_through_the_demo(target, tmp_path, monkeypatch):
    claude = _claude()
    monkeypatch.setattr("ccproxy_plugins.demo.WORD_DELAY", 0.0)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["models"] = {DEFAULT_MODEL: {"model": target}}
    recorder = Recorder()
    with ProxyThread(config, plugins=[("recorder", recorder)]) as server:
        done = _run(claude, server, tmp_path, "run the echo command", "--tools", "Bash", "--allowedTools", "Bash")
        listed = httpx.get(server.url + "/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
    assert done.returncode == 0, done.stderr[-2000:]
    # The demo called Bash; Claude Code ran it and sent the result back; the demo answered with it.
    assert "The tool returned: hello from the ccproxy demo" in done.stdout
    calls = [s for s in recorder.seen if s["path"] == "/v1/messages"]
    assert len(calls) == 2 and all(c["query"] == "beta=true" for c in calls)
    assert all(c["body"]["model"] == DEFAULT_MODEL for c in calls)
    assert calls[1]["body"]["messages"][-1]["content"][0]["type"] == "tool_result"
    assert DEFAULT_MODEL in [m["id"] for m in listed["data"]]
