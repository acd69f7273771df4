"""The usage plugin reads a JSON answer's ``usage`` from its end when it can: the same numbers as parsing
the whole body, for every body that parses (the end is read, or the whole body is parsed as before)."""

from __future__ import annotations

import json
import random

import pytest

from ccproxy_core import ANTHROPIC, OPENAI, RESPONSES, RequestContext
from ccproxy_plugins import usage as plugin
from ccproxy_plugins.usage import _UNKNOWN, last_member_usage

ANTHROPIC_USAGE = {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3, "output_tokens": 5}
CHAT_USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
              "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0}}
RESPONSES_USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 5,
                   "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 17}
ANTHROPIC_BODY = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                  "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
                  "usage": ANTHROPIC_USAGE}
CHAT_BODY = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
             "usage": CHAT_USAGE, "service_tier": "default", "system_fingerprint": "fp_1"}
RESPONSES_BODY = {"id": "resp_1", "object": "response", "status": "completed", "output": [], "temperature": 1.0,
                  "usage": RESPONSES_USAGE, "user": None, "metadata": {}}

#: Bodies the end is read from: the three dialects' answers in compact and in indented JSON.
READ_FROM_THE_END = [
    json.dumps(body, **style).encode()
    for body in (ANTHROPIC_BODY, CHAT_BODY, RESPONSES_BODY)
    for style in ({"separators": (",", ":")}, {"indent": 2}, {})
] + [
    b'{"usage" :\n {"input_tokens": 1} \r\n\t}\n',  # whitespace everywhere JSON allows it
    b'{"usage":{"input_tokens":1},"usage":{"input_tokens":2}}',  # a duplicate: the last one counts
    b'{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":99}}}],"usage":{"input_tokens":1}}',
    b'{"usage":{"input_tokens":1},"a":1,"b":-2.5e3,"c":"text","d":true,"e":false,"f":null,"g":[],"h":{ }}',
    b'{"a\\\\":"\\\\","usage":{"input_tokens":1}}',  # escaped backslashes before it
    '{"text":"h\u00e9llo \u2603","usage":{"input_tokens":1}}'.encode(),
]

#: Bodies that need the whole parse (or that the whole parse refuses): the answer is still the whole parse's.
PARSED_WHOLE = [
    b'{"usage":{"input_tokens":1},"content":[{"input":{"usage":{"input_tokens":99}}}]}',  # nested usage after it
    b'{"usage":{"input_tokens":1},"x":{"usage":{"input_tokens":99}}}',
    b'{"usage":{"input_tokens":1},"note":"usage"}',  # "usage" as a string value, last
    b'{"note":"usage"}',
    b'{"usage":"usage"}',
    b'{"usage":{"input_tokens":1},"metadata":{"a":1}}',  # a tail member that is not a plain literal
    b'{"usage":{"input_tokens":1},"x":"a\\"b"}',  # an escape in a tail string
    b'{"usage":{"input_tokens":1},"usa\\u0067e":{"input_tokens":3}}',  # a later duplicate, spelled with an escape
    b'{"usage":{"input_tokens":1}' + b',"k":0' * 9 + b"}",  # more tail members than are read
    b'{"a\\"usage":{"input_tokens":5}}',  # the end of a longer name
    b'[{"usage":{"input_tokens":1}}]',  # not an object
    b'"usage"',
    b'{"usage":{"input_tokens":1}}}',  # invalid: a brace too many
    b'{"usage":{"input_tokens":1}',  # truncated
    b'{"usage":{"input_tokens":1}} x',  # extra data
    b'{"usage":{"input_tokens":01}}',
    b'{"usage":{"input_tokens":1},"x":01}',
    b'{"usage":}',
    b'{"usage"}',
    b'{"x":"\xe9","usage":{"input_tokens":1}}',  # Latin-1, not UTF-8: refused by both
    b'{"x":"\xed\xa0\x80","usage":{"input_tokens":1}}',  # a lone surrogate, which json.loads accepts
    b'\xef\xbb\xbf{"usage":{"input_tokens":1}}',  # a UTF-8 byte order mark
    json.dumps({"usage": {"input_tokens": 1}}).encode("utf-16-le"),
    json.dumps({"usage": {"input_tokens": 1}}).encode("utf-16"),
    json.dumps({"usage": {"input_tokens": 1}}).encode("utf-32"),
    b' {"usage":{"input_tokens":1}}',  # leading whitespace
]


def whole_parse(body: bytes) -> object:
    """What the plugin read before: the top-level ``usage`` of the parsed body, or _UNKNOWN."""
    try:
        payload = json.loads(body)
    except ValueError:
        return _UNKNOWN
    return payload.get("usage") if isinstance(payload, dict) else _UNKNOWN


@pytest.mark.parametrize("body", READ_FROM_THE_END)
def test_the_usual_answers_are_read_from_their_end(body):
    assert whole_parse(body) is not _UNKNOWN
    assert last_member_usage(body) == whole_parse(body)


@pytest.mark.parametrize("body", PARSED_WHOLE)
def test_anything_else_is_left_to_the_whole_parse(body):
    assert last_member_usage(body) is _UNKNOWN


def settled(dialect: str, body: bytes) -> tuple:
    ctx = RequestContext("r", "POST", "/v1/messages", dialect, upstream_dialect=dialect, upstream_status=200)
    plugin.ccproxy_response_body(ctx, body)
    flags = ctx.state.get("usage") or {}
    return ctx.usage, flags.get("source"), flags.get("final")


def settled_before(dialect: str, body: bytes) -> tuple:
    """The hook as it was: the whole body parsed."""
    ctx = RequestContext("r", "POST", "/v1/messages", dialect, upstream_dialect=dialect, upstream_status=200)
    payload = whole_parse(body) if b'"usage"' in body else _UNKNOWN
    if payload is not _UNKNOWN:
        flags = plugin._flags(ctx)
        if dialect == ANTHROPIC:
            plugin._set_anthropic(ctx, payload, replace=False)
        else:
            plugin._set_openai(ctx, payload, plugin._RESPONSES_KEYS if dialect == RESPONSES else plugin._CHAT_KEYS)
        if ctx.usage is not None:
            flags["source"], flags["final"] = "body", True
    flags = ctx.state.get("usage") or {}
    return ctx.usage, flags.get("source"), flags.get("final")


@pytest.mark.parametrize("dialect", [ANTHROPIC, OPENAI, RESPONSES])
def test_the_hook_settles_what_the_whole_parse_did(dialect):
    bodies = READ_FROM_THE_END + PARSED_WHOLE
    rng = random.Random(17)
    for body in list(bodies):  # and every body cut short or with a byte changed, from its last "usage" on
        for _ in range(20):
            at = rng.randrange(max(body.rfind(b'"usage"'), 0), len(body))
            bodies.append(body[:at])
            bodies.append(body[:at] + bytes([rng.randrange(256)]) + body[at + 1 :])
    for body in bodies:
        if last_member_usage(body) is _UNKNOWN or whole_parse(body) is not _UNKNOWN:  # see the next test
            assert settled(dialect, body) == settled_before(dialect, body), body


def test_only_text_before_the_usage_member_goes_unread():
    """The one difference from parsing the whole body: an answer malformed before its last usage
    member (cut short, say), which the whole parse refuses, gives that member's numbers."""
    for body in (
        b'{"id": "msg_1\x7f, "usage": {"input_tokens": 12, "output_tokens": 5}}',
        b'{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":12,"output_tokens":5}}',  # cut short
    ):
        assert whole_parse(body) is _UNKNOWN
        assert last_member_usage(body) == {"input_tokens": 12, "output_tokens": 5}


def random_value(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -7, 12, 3.5, -1e-3, 10**20])
    if kind in (3, 4):
        return rng.choice(["", "usage", "a\"b", "\\", "usage\":{", "\u00e9\u2603", "\n"])
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["usage", "a", "b", "input"]): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_random_objects_give_what_the_whole_parse_gives():
    rng = random.Random(2026)
    read = 0
    for _ in range(3000):
        members = [(rng.choice(["usage", "id", "x", "metadata"]), random_value(rng, 1)) for _ in range(rng.randrange(6))]
        style = rng.choice([{"separators": (",", ":")}, {"indent": 1}, {}, {"ensure_ascii": False}])
        text = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v, **style)}" for k, v in members) + "}"  # duplicates kept
        body = text.encode()
        found = last_member_usage(body)
        if found is not _UNKNOWN:
            read += 1
            assert found == whole_parse(body), body
    assert read > 300  # the end was read often enough for this to test it


def test_the_price_cache_answers_what_the_globs_do_and_stays_bounded(monkeypatch):
    """``PriceTable.by_model`` (what ``ccproxy_stream_end`` reads) is ``lookup``, asked again or not, for
    priced, unpriced and empty names, with the user's globs first; past its bound it still answers, unkept."""
    from ccproxy_plugins.usage import PriceSetting, PriceTable

    table = PriceTable({"gpt-4o*": PriceSetting(1.0, 2.0), "my-*": PriceSetting(3.0, 4.0, 0.5)})
    rng = random.Random(5)
    names = [None, "", "my-model", "gpt-4o-mini", "claude-opus-4-5-20251101", "claude-bench-1", "o3-pro", "gpt-5-nano-x"]
    names += ["".join(rng.choice("claude-gpt-o1345mini*?[]") for _ in range(rng.randrange(1, 16))) for _ in range(300)]
    for name in names + names:  # the second time from the cache
        assert table.by_model[name] == table.lookup(name), name
    assert table.by_model["gpt-4o-mini"].input == 1.0 and table.by_model["claude-bench-1"] is None
    monkeypatch.setattr(plugin, "MAX_CACHED_MODELS", len(table.by_model) + 1)
    for i in range(5):
        assert table.by_model[f"claude-sonnet-4-{i}"] == table.lookup("claude-sonnet-4")
    assert len(table.by_model) == plugin.MAX_CACHED_MODELS
