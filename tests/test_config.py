"""Configuration: interpolation, validation messages, start-up failures as one readable line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ccproxy_core import ConfigError, load_config
from ccproxy_core.config import build_config

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
providers:
  anthropic:
    format: anthropic
    base_url: https://api.anthropic.com/
    api_key: ${TEST_ANTHROPIC_KEY}
    models: ["claude-*"]
  local:
    format: openai
    base_url: ${LOCAL_URL:-http://127.0.0.1:11434/v1}
    requires_key: false
    models: ["llama*"]
    timeouts: {connect: 1, headers: 2, idle: 3, total: 4}
models:
  fast: {model: claude-haiku-4-5}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_good_config_with_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-test")
    monkeypatch.delenv("LOCAL_URL", raising=False)
    config = load_config(write(tmp_path, GOOD))
    anthropic = config.providers["anthropic"]
    assert anthropic.api_key == "sk-test" and anthropic.base_url == "https://api.anthropic.com"
    assert config.providers["local"].base_url == "http://127.0.0.1:11434/v1"
    assert config.providers["local"].timeouts.idle == 3
    assert config.models["fast"].model == "claude-haiku-4-5"
    assert anthropic.serves("claude-opus-4") and not anthropic.serves("gpt-4o")


def test_ccproxy_config_env_selects_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "k")
    monkeypatch.setenv("CCPROXY_CONFIG", write(tmp_path, GOOD))
    assert "local" in load_config().providers


@pytest.mark.parametrize(
    "text,message",
    [
        ("providers: [1, 2]", "providers: expected a mapping, got list"),
        ("providers:\n  a: {format: anthropic, base_url: 'https://x', api_key: k, models: [a], colour: red}",
         "providers.a.colour: unknown key"),
        ("providers:\n  a: {format: cobol, base_url: 'https://x', api_key: k, models: [a]}",
         "providers.a.format: expected one of anthropic, openai, responses, got 'cobol'"),
        ("providers:\n  a: {format: openai, base_url: 'ftp://x', api_key: k, models: [a]}", "providers.a.base_url"),
        ("providers:\n  a: {format: openai, base_url: 'https://x', api_key: k}", "providers.a.models: list at least one"),
        ("providers:\n  a: {base_url: 'https://x', api_key: k, models: [a]}", "providers.a.format: required key is missing"),
        ("timeouts: {connect: soon}", "timeouts.connect: expected a number, got str 'soon'"),
        ("timeouts: {connect: -1}", "timeouts.connect: must not be negative"),
        ("limits: {max_body_bytes: 1.5}", "limits.max_body_bytes: expected a whole number"),
        ("limits: {head_timeout: 0}", "limits.head_timeout: must be a positive number of seconds, got 0"),
        ("limits: {body_timeout: 0}", "limits.body_timeout: must be a positive number of seconds, got 0"),
        ("limits: {max_model_length: 0}", "limits.max_model_length: must be at least 1, got 0"),
        ("limits: {max_response_head_bytes: 100}", "limits.max_response_head_bytes: must be at least 1024"),
        ("limits: {max_response_headers: 0}", "limits.max_response_headers: must be at least 1"),
        ("providers:\n  a: {format: openai, base_url: 'https://x', api_key: '${NOPE_NOT_SET}', models: [a]}",
         "environment variable NOPE_NOT_SET is not set"),
        ("colour: red", "colour: unknown key"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(path + ": ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2"):
        load_config(write(tmp_path, "a: 1\n b: [\n"))


def test_provider_without_key_is_skipped_with_warning(caplog, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    config = build_config({"providers": {
        "a": {"format": "openai", "base_url": "https://x", "api_key": "${NOPE_KEY:-}", "models": ["m"]},
        "b": {"format": "openai", "base_url": "https://y", "requires_key": False, "models": ["n"]},
    }})
    assert list(config.providers) == ["b"]
    assert config.skipped["a"].variables == ["NOPE_KEY"] and config.skipped["a"].hint() == "set NOPE_KEY"
    assert "provider 'a' has no api_key; it is skipped (set NOPE_KEY" in caplog.text


LOCAL = "providers:\n  local: {format: openai, base_url: 'http://127.0.0.1:1/v1', requires_key: false, models: [m]}\n"


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "the file is empty"),
        ("# nothing but a comment\n", "the file is empty"),
        ("timeouts: {connect: 1}", "providers: no provider is configured"),
        ("providers: {}", "providers: no provider is configured"),
        ("providers:\n  a: {format: openai, base_url: 'https://x', api_key: '${CCPROXY_TEST_UNSET:-}', models: [m]}\n"
         "  b: {format: anthropic, base_url: 'https://y', api_key: '', models: [n]}",
         "providers: every provider is skipped because its api_key is empty "
         "(a: set CCPROXY_TEST_UNSET; b: set providers.b.api_key)"),
        (LOCAL + "models:\n  fast: {model: m, provider: nope}", "models.fast.provider: no provider is called 'nope'"),
        (LOCAL + "models:\n  fast: {model: m, fallbacks: [{model: m, provider: nope}]}",
         "models.fast.fallbacks[0].provider: no provider is called 'nope'"),
        (LOCAL.replace("models: [m]", "models: [m], fallbacks: [nope]"), "providers.local.fallbacks: no provider is called 'nope'"),
        (LOCAL + "worker_timeout: 0.5", "worker_timeout: must be 0 (off) or at least 1 second, got 0.5"),
        (LOCAL + "timeouts: {connect: 1}\ntimeouts: {connect: 2}", "line 4, column 1: duplicate key 'timeouts' (first at line 3)"),
        (LOCAL.replace("requires_key: false", "requires_key: false, requires_key: true"), "duplicate key 'requires_key' (first at line 2)"),
        (LOCAL + "plugins:\n  usage:\n    prices:\n      'm*': {input: 1, output: 2}\n      'm*': {input: 3, output: 4}",
         "line 7, column 7: duplicate key 'm*' (first at line 6)"),
    ],
)
def test_nothing_to_serve_unknown_names_and_duplicate_keys_are_errors(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("CCPROXY_TEST_UNSET", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(path + ": ") and "\n" not in str(info.value)
    assert message in str(info.value)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    config = load_config(write(tmp_path, (
        "providers:\n"
        "  one: &base {format: openai, base_url: 'http://127.0.0.1:1/v1', requires_key: false, models: [a]}\n"
        "  two: {<<: *base, models: [b]}\n"
    )))
    assert config.providers["two"].models == ["b"] and config.providers["two"].format == "openai"


def test_a_skipped_provider_named_by_an_alias_or_fallback_is_a_warning(caplog, monkeypatch):
    monkeypatch.delenv("CCPROXY_TEST_UNSET", raising=False)
    config = build_config({
        "providers": {
            "paid": {"format": "anthropic", "base_url": "https://x", "api_key": "${CCPROXY_TEST_UNSET:-}",
                     "models": ["claude-*"]},
            "local": {"format": "openai", "base_url": "http://127.0.0.1:1", "requires_key": False, "models": ["m"],
                      "fallbacks": ["paid"]},
        },
        "models": {"fast": {"model": "claude-x", "provider": "paid", "fallbacks": [{"model": "m", "provider": "paid"}]}},
    })
    assert config.providers["local"].fallbacks == []
    assert "models.fast.provider: provider 'paid' is skipped (no api_key: set CCPROXY_TEST_UNSET)" in caplog.text
    assert "providers.local.fallbacks: provider 'paid' is skipped" in caplog.text


def run_app(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CCPROXY_CONFIG": write(tmp_path, text)}
    return subprocess.run(
        [sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("text", ["providers: {a: 1}", "plugins: {nosuchplugin: {x: 1}}", "", "providers: {}"])
def test_service_refuses_to_start_with_one_line(tmp_path, text):
    result = run_app(tmp_path, text)
    assert result.returncode == 2
    assert result.stderr.startswith("ccproxy: configuration error: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


#: (plugin settings, the key and problem the one line must name), a typo and a wrong type per first-party plugin.
PLUGIN_MISTAKES = [
    ("auth: {kyes: [a]}", "plugins.auth.kyes: unknown setting"),
    ("auth: {allow_public_without_keys: sometimes}",
     "plugins.auth.allow_public_without_keys: expected true or false, got str 'sometimes'"),
    ("usage: {price: {}}", "plugins.usage.price: unknown setting"),
    ("usage: {prices: {'claude-*': {input: cheap, output: 1}}}",
     "plugins.usage.prices.claude-*.input: expected a number, got str 'cheap'"),
    ("usage: {prices: {'claude-*': {input: 1, output: 2, cache_reed: 1}}}",
     "plugins.usage.prices.claude-*.cache_reed: unknown setting"),
    ("metrics: {paht: /m}", "plugins.metrics.paht: unknown setting"),
    ("metrics: {duration_buckets: fast}", "plugins.metrics.duration_buckets: expected a list, got str 'fast'"),
    ("access_log: {log_body: true}", "plugins.access_log.log_body: unknown setting"),
    ("access_log: {max_body_chars: lots}", "plugins.access_log.max_body_chars: expected a whole number, got str 'lots'"),
    ("access_log: {path: /nonexistent-dir/x.log}", "plugins.access_log.path: cannot open '/nonexistent-dir/x.log'"),
    ("health: {pat: /ready}", "plugins.health.pat: unknown setting"),
    ("health: {path: [1]}", "plugins.health.path: expected a string, got list"),
    ("translate: {thinkin: drop}", "plugins.translate.thinkin: unknown setting"),
    ("translate: {default_max_tokens: many}", "plugins.translate.default_max_tokens: expected a whole number"),
    ("demo: {speed: 1}", "plugins.demo.speed: unknown setting (plugin 'demo' takes: none)"),
    ("demo: [1]", "plugins.demo: expected a mapping of settings"),
    ("providers: {x: 1}", "plugins.providers.x: unknown setting (plugin 'providers' takes: none)"),
    ("providers: on", "plugins.providers: expected a mapping of settings"),
    ("dashboard: {path: dash}", "plugins.dashboard.path: must start with '/'"),
    ("dashboard: {interval: 0}", "plugins.dashboard.interval: must be 0.1..60 seconds"),
    ("dashboard: {recent: 0}", "plugins.dashboard.recent: must be 1..1000"),
    ("otel: {endpoint: x}", "plugins.otel.endpoint: unknown setting"),
    ("otel: {enabled: maybe}", "plugins.otel.enabled: expected true or false"),
    ("auth: {admin_keys: k}", "plugins.auth.admin_keys: expected a list"),
]


@pytest.mark.parametrize("settings,message", PLUGIN_MISTAKES, ids=[m[0] for m in PLUGIN_MISTAKES])
def test_bad_plugin_settings_stop_import_app_with_one_line(tmp_path, settings, message):
    result = run_app(tmp_path, LOCAL + "plugins:\n  " + settings + "\n")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ccproxy: configuration error: {tmp_path / 'c.yaml'}: ")
    assert message in lines[0]


def test_bundled_config_loads_offline(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = load_config(str(ROOT / "config.yaml"))
    assert set(config.providers) == {"demo", "demo-openai"}


def test_bundled_config_uses_real_providers_when_keys_are_set(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    config = load_config(str(ROOT / "config.yaml"))
    anthropic, openai = config.providers["anthropic"], config.providers["openai"]
    assert (anthropic.base_url, anthropic.api_key, anthropic.format) == ("https://api.anthropic.com", "sk-ant-test", "anthropic")
    assert (openai.base_url, openai.api_key, openai.format) == ("https://api.openai.com/v1", "sk-openai-test", "openai")
    assert anthropic.serves("claude-sonnet-4-5") and openai.serves("gpt-4o") and openai.serves("o3")


def test_a_model_of_a_skipped_provider_gets_a_404_naming_the_variable(make_proxy, mock, monkeypatch):
    monkeypatch.delenv("CCPROXY_TEST_ANTHROPIC_KEY", raising=False)
    server = make_proxy({
        "providers": {
            "anthropic": {"format": "anthropic", "base_url": "https://api.anthropic.com",
                          "api_key": "${CCPROXY_TEST_ANTHROPIC_KEY:-}", "models": ["claude-*"]},
            "local": {"format": "openai", "base_url": mock.url + "/v1", "requires_key": False, "models": ["gpt-*"]},
        },
        "models": {"smart": {"model": "claude-sonnet-4-5", "provider": "anthropic"}},
    })
    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(server.url + "/v1/messages", json=body)
    assert reply.status_code == 404
    assert reply.json()["error"] == {
        "type": "not_found_error",
        "message": "model 'claude-x' would be served by provider 'anthropic', which is skipped because its api_key "
                   "is empty: set CCPROXY_TEST_ANTHROPIC_KEY",
    }
    reply = httpx.post(server.url + "/v1/chat/completions", json={**body, "model": "smart"})
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == (
        "model 'smart' maps to provider 'anthropic', which is skipped because its api_key is empty: "
        "set CCPROXY_TEST_ANTHROPIC_KEY"
    )
    reply = httpx.post(server.url + "/v1/messages", json={**body, "model": "llama"})
    assert reply.json()["error"]["message"] == "model 'llama' is not served by any configured provider"


def test_auth_flags_from_the_environment_are_read_as_booleans(monkeypatch):
    from ccproxy_plugins.auth import settings_of

    monkeypatch.setenv("CCPROXY_TEST_PUBLIC", "false")
    config = build_config({"plugins": {"auth": {"allow_public_without_keys": "${CCPROXY_TEST_PUBLIC}"}}})
    assert settings_of(config).allow_public_without_keys is False


def test_every_first_party_plugin_has_its_bad_settings_tested():
    from ccproxy_core.plugins import DEFAULT_PLUGINS

    first_party = {module.rpartition(".")[2] for module in DEFAULT_PLUGINS}
    tested = {settings.split(":", 1)[0] for settings, _ in PLUGIN_MISTAKES}
    assert tested == first_party
