"""``anthropic-beta`` across translation: kept for an Anthropic upstream, never sent to an OpenAI one
(what each beta becomes there is in docs/translation.md, *Anthropic betas*)."""

from __future__ import annotations

import httpx

#: What Claude Code 2.1.197 sends (docs/translation.md).
CLAUDE_CODE_BETAS = ("claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,"
                     "thinking-token-count-2026-05-13,context-management-2025-06-27,prompt-caching-scope-2026-01-05,"
                     "mid-conversation-system-2026-04-07,effort-2025-11-24")
HEADERS = {"anthropic-version": "2023-06-01", "anthropic-beta": CLAUDE_CODE_BETAS,
           "anthropic-dangerous-direct-browser-access": "true", "x-api-key": "client"}
BODY = {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 2048}, "context_management": {"edits": []}}


def test_betas_never_reach_an_openai_upstream(proxy, upstream):
    for path in ("/v1/messages?beta=true", "/v1/messages/count_tokens?beta=true"):
        r = httpx.post(proxy.url + path, json={**BODY, "model": "gpt-4o"}, headers=HEADERS)
        assert r.status_code == 200, r.text
    sent = upstream.upstream.requests
    assert len(sent) == 1  # the count was estimated locally
    assert not [name for name, _ in sent[0].headers if name.lower().startswith("anthropic-")]
    assert sent[0].query == ""  # Claude Code's ?beta=true is Anthropic's, not sent either
    assert "beta" not in sent[0].body.decode()


def test_betas_reach_an_anthropic_upstream_unchanged(proxy, upstream):
    r = httpx.post(proxy.url + "/v1/messages?beta=true", json={**BODY, "model": "claude-sonnet-4-5"}, headers=HEADERS)
    assert r.status_code == 200
    assert upstream.upstream.requests[-1].header("anthropic-beta") == CLAUDE_CODE_BETAS
