"""Prompt caching across translation: a two-turn Claude Code conversation sent to an OpenAI upstream
keeps its prefix (cached tokens on turn two), because the per-request billing-header line is
removed and the session gives a stable ``prompt_cache_key``."""

from __future__ import annotations

import json

import anthropic
import pytest

from ccproxy_plugins.translate.caching import cache_key, without_billing_header
from tests.prefix_cache_upstream import PrefixCacheUpstream
from tests.servers import ProxyThread, provider_config

SESSION = "65fd4fb7-7db1-412f-8178-60560a413437"
USER_ID = json.dumps({"device_id": "91dc71", "account_uuid": "", "session_id": SESSION})
LONG_SYSTEM = "You are Claude Code, a coding agent. " + "Follow the project's rules carefully. " * 300


def _system(cch: str) -> list[dict]:
    return [{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.197.c40; cc_entrypoint=cli; cch={cch};"},
            {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]


@pytest.fixture
def cache_upstream():
    with PrefixCacheUpstream() as upstream:
        yield upstream


def test_two_turns_keep_their_prefix(cache_upstream):
    config = provider_config("http://127.0.0.1:9")
    config["providers"]["openai"]["base_url"] = cache_upstream.url + "/v1"
    with ProxyThread(config) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
        turn = [{"role": "user", "content": "list the files"}]
        first = client.messages.create(model="gpt-4o", max_tokens=50, system=_system("a1b2c"), messages=turn,
                                       metadata={"user_id": USER_ID})
        turn += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now the tests"}]
        second = client.messages.create(model="gpt-4o", max_tokens=50, system=_system("f00d9"), messages=turn,
                                        metadata={"user_id": USER_ID})
    assert (first.usage.cache_read_input_tokens or 0) == 0
    assert second.usage.cache_read_input_tokens >= 1024  # the whole system prompt and turn one
    sent = cache_upstream.bodies
    assert all("x-anthropic-billing-header" not in json.dumps(b) for b in sent)
    assert sent[0]["prompt_cache_key"] == sent[1]["prompt_cache_key"] == cache_key({"metadata": {"user_id": USER_ID}})
    assert SESSION not in json.dumps(sent[0]["prompt_cache_key"])


def test_billing_header_line_only_is_removed():
    assert without_billing_header("x-anthropic-billing-header: cch=1;\nYou are helpful.") == "You are helpful."
    assert without_billing_header(_system("abcde"))[0]["text"] == LONG_SYSTEM
    kept = [{"type": "text", "text": "You are helpful."}]
    assert without_billing_header(kept) is kept and without_billing_header(None) is None


def test_cache_key_sources():
    assert cache_key({"prompt_cache_key": "mine", "metadata": {"user_id": USER_ID}}) == "mine"
    legacy = cache_key({"metadata": {"user_id": f"user_abc_account__session_{SESSION}"}})
    assert legacy == cache_key({"metadata": {"user_id": USER_ID}})
    assert cache_key({"metadata": {"user_id": "just-a-user"}}) is None and cache_key({}) is None


def test_anthropic_upstream_gets_the_billing_header_unchanged(proxy, upstream):
    client = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=5, system=_system("a1b2c"),
                           messages=[{"role": "user", "content": "hi"}], metadata={"user_id": USER_ID})
    sent = json.loads(upstream.upstream.requests[-1].body)
    assert sent["system"] == _system("a1b2c") and "prompt_cache_key" not in sent
