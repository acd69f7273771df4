"""Configuration: interpolation, validation messages, start-up failures as one readable line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
         "providers.a.format: expected one of anthropic, openai, got 'cobol'"),
        ("providers:\n  a: {format: openai, base_url: 'ftp://x', api_key: k, models: [a]}", "providers.a.base_url"),
        ("providers:\n  a: {format: openai, base_url: 'https://x', api_key: k}", "providers.a.models: list at least one"),
        ("providers:\n  a: {base_url: 'https://x', api_key: k, models: [a]}", "providers.a.format: required key is missing"),
        ("timeouts: {connect: soon}", "timeouts.connect: expected a number, got str 'soon'"),
        ("timeouts: {connect: -1}", "timeouts.connect: must not be negative"),
        ("limits: {max_body_bytes: 1.5}", "limits.max_body_bytes: expected a whole number"),
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


def test_provider_without_key_is_skipped_with_warning(caplog):
    config = build_config({"providers": {"a": {"format": "openai", "base_url": "https://x", "api_key": "", "models": ["m"]}}})
    assert config.providers == {}
    assert "provider 'a' has no api_key" in caplog.text


@pytest.mark.parametrize("text", ["providers: {a: 1}", "plugins: {nosuchplugin: {x: 1}}"])
def test_service_refuses_to_start_with_one_line(tmp_path, text):
    env = {**os.environ, "CCPROXY_CONFIG": write(tmp_path, text)}
    result = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ccproxy: configuration error: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


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
