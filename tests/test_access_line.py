"""The access log's line is made field by field: the same text as the JSON of its fields (the way it was
made before, kept here as the specification), for every kind of value a field can hold, redacted the same."""

from __future__ import annotations

import enum
import json
import math
import random
from typing import Any

import pytest

from ccproxy_core import Attempt, ProxyError, RequestContext, Usage
from ccproxy_core.config import build_config
from ccproxy_core.plugins import PluginSettings
from ccproxy_plugins import access_line, access_log
from tests.servers import provider_config

SECRET = "sk-ant-upstream-SECRET"  # the configured provider key
ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
FREE_TEXT = ("request_id", "upstream_request_id", "route", "provider", "model_requested", "model", "error", "error_kind")


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def expected(log: access_line.Lines, ctx: RequestContext) -> str:
    """The line as it was made: a dict of the fields, redacted field by field (or, with bodies, as text), encoded."""
    mine = ctx.state.get("access_log") or {}
    headers = ctx.response_headers
    # The error: the proxy's own, else the upstream's error answer, else an error event in the stream.
    candidates = [
        (ctx.error.message, ctx.error.kind) if ctx.error else None,
        mine.get("upstream_error"),
        (ctx.inband_error, "in_band") if ctx.inband_error is not None else None,
    ]
    message, kind = next((c for c in candidates if c is not None), (None, None))
    record: dict[str, Any] = {
        "time": access_line._iso(ctx.started_at), "pid": log.pid, "request_id": ctx.request_id,
        "upstream_request_id": headers.get("request-id") or headers.get("x-request-id"), "method": ctx.method,
        "route": ctx.route, "client_dialect": ctx.client_dialect, "key": ctx.client_key, "provider": ctx.provider,
        "upstream_dialect": ctx.upstream_dialect, "model_requested": ctx.model_requested, "model": ctx.model,
        "stream": ctx.stream, "status": ctx.status, "upstream_status": ctx.upstream_status, "outcome": ctx.outcome,
        "t_upstream_headers_ms": ms(ctx.t_upstream_headers), "t_first_byte_ms": ms(ctx.t_first_byte),
        "duration_ms": ms(ctx.duration), "bytes_sent": ctx.bytes_sent, "events_sent": ctx.events_sent,
        "usage": ctx.usage.as_dict() if ctx.usage is not None else None, "usage_partial": ctx.usage_partial,
        "cost_usd": ctx.cost,
        "attempts": [{"provider": a.provider, "model": a.model, "status": a.status, "error": a.error,
                      "error_kind": a.error_kind, "elapsed_ms": ms(a.elapsed)} for a in ctx.attempts],
        "fallback": len(ctx.attempts) > 1, "error": message, "error_kind": kind,
    }
    if log.log_bodies:
        record["request_body"] = log.body(ctx.body)
        record["response_body"] = log.body(mine.get("response_body"))
        return log.redactor.text(ENCODER.encode(record))
    for fields, keys in [(record, FREE_TEXT)] + [(a, ("provider", "model", "error")) for a in record["attempts"]]:
        for key in keys:
            if isinstance(fields[key], str) and log.redactor.raw.search(fields[key]):
                fields[key] = log.redactor.value(fields[key])
    return ENCODER.encode(record)


class Status(enum.IntEnum):
    OK = 200


class Text(str):
    pass


TEXTS = [None, "", "claude-x", "gpt-\u00e9\u2603", 'quote " and \\ and \n\t\x00', f"model {SECRET}",
         "Bearer abcdefghijklmnop", "sk-live-abcdefgh", Text("sub-str"), "\ud800"]
NUMBERS = [None, 0, 200, 529, -1, 10**30, 1.5, 0.1 + 0.2, math.nan, math.inf, -math.inf, True, False, Status.OK]
SECONDS = [None, 0.0, 0.0012345, 1e-9, 12345.678, 7, math.nan, math.inf]


def random_ctx(rng: random.Random) -> RequestContext:
    pick = rng.choice
    ctx = RequestContext(pick(["req-1", f"id {SECRET}", "\u00e9"]), pick(["POST", "GET"]), pick(TEXTS) or "/v1/x",
                         pick(["anthropic", "openai", Text("responses")]))
    ctx.started_at = pick([1_700_000_000.0005, 1_700_000_000.9999996, 0.0, -1.5, 1_800_000_000.123456])
    ctx.model_requested, ctx.model, ctx.provider, ctx.client_key = pick(TEXTS), pick(TEXTS), pick(TEXTS), pick(TEXTS)
    ctx.upstream_dialect, ctx.outcome, ctx.inband_error = pick(TEXTS), pick(TEXTS), pick(TEXTS)
    ctx.stream, ctx.usage_partial = pick([True, False, 1, None]), pick([True, False])
    ctx.status, ctx.upstream_status, ctx.bytes_sent, ctx.events_sent = (pick(NUMBERS) for _ in range(4))
    ctx.cost = pick(NUMBERS)
    ctx.t_upstream_headers, ctx.t_first_byte, ctx.duration = (pick(SECONDS) for _ in range(3))
    ctx.response_headers = pick([{}, {"request-id": pick(TEXTS) or "r"}, {"x-request-id": f"up {SECRET}"}])
    if rng.random() < 0.7:
        ctx.usage = Usage(*(pick([0, 12, 10**12, True, 2.5]) for _ in range(4)))
    for _ in range(pick([0, 1, 1, 2, 3])):
        ctx.attempts.append(Attempt(pick(TEXTS), pick(TEXTS), "http://u", pick(NUMBERS), pick(TEXTS), pick(TEXTS),
                                    pick(SECONDS)))
    if rng.random() < 0.2:
        ctx.error = ProxyError(pick(["boom", f"failed {SECRET}"]), status=502)
    elif rng.random() < 0.2:
        ctx.state["access_log"] = {"upstream_error": (pick(TEXTS), pick(["upstream", "overloaded_error"]))}
    ctx.body = pick([None, {"api_key": "x", "messages": [{"content": f"hi {SECRET}"}]}])
    if rng.random() < 0.3:
        ctx.state.setdefault("access_log", {})["response_body"] = pick([b'{"a":1}', b"not json", b"\xff"])
    return ctx


@pytest.mark.parametrize("bodies", [False, True])
def test_every_line_is_the_json_of_its_fields(bodies):
    config = build_config(provider_config("http://127.0.0.1:9"), "test-config")
    log = access_log.ccproxy_configure(config, PluginSettings("access_log", {"log_bodies": bodies}, "test-config")).lines
    rng = random.Random(17)
    for _ in range(3000):
        ctx = random_ctx(rng)
        assert log.line(log.fields(ctx, ctx.state.get("access_log") or {})) == expected(log, ctx)
    assert access_line.MAX_NAME_PARTS > len(log.name_parts) > 100  # the name parts were kept and reused


def test_kept_name_parts_are_bounded(monkeypatch):
    monkeypatch.setattr(access_line, "MAX_NAME_PARTS", 10)
    config = build_config(provider_config("http://127.0.0.1:9"), "test-config")
    log = access_log.ccproxy_configure(config, PluginSettings("access_log", {}, "test-config")).lines
    for i in range(50):
        ctx = RequestContext("r", "POST", "/v1/messages", "anthropic", model=f"model-{i}", model_requested=[i])
        assert log.line(log.fields(ctx, ctx.state.get("access_log") or {})) == expected(log, ctx)  # a list is no text: its part is made, not kept
        ctx.model_requested = f"m-{i}"
        assert log.line(log.fields(ctx, ctx.state.get("access_log") or {})) == expected(log, ctx)
        assert len(log.name_parts) <= 10


def test_milliseconds_are_the_rounded_float_repr():
    """``_ms`` writes ``round(seconds * 1000, 1)`` as the encoder does, for every magnitude, ties included."""
    rng = random.Random(13)
    values = [0.0, -0.0, -1e-9, 0.00025, 0.00015, 0.00005, 9.99999999e9, 1e10, -1e10, 1.0, 7, True, None, math.nan]
    values += [rng.choice([1, -1]) * 10 ** rng.uniform(-10, 11) for _ in range(20000)]
    values += [round(rng.uniform(-1e3, 1e3), 3) + 0.00005 for _ in range(2000)]
    for seconds in values:
        expected_ms = None if seconds is None else round(seconds * 1000, 1)
        assert access_line._ms(seconds) == ENCODER.encode(expected_ms), seconds


def test_time_is_the_datetime_iso_format():
    """``_iso`` writes what ``datetime`` writes, microseconds rounded half-even, then cut to milliseconds."""
    from datetime import datetime, timezone

    rng = random.Random(5)
    values = [0.0, -1.5, -0.0000001, 1_700_000_000.9999996, 1_700_000_000.0005, 1_700_000_000.0000005, 7]
    values += [rng.uniform(0, 4e9) for _ in range(5000)] + [rng.randrange(10**9, 2 * 10**9) + rng.randrange(10**6) / 1e6
                                                          for _ in range(5000)]
    for timestamp in values:
        text = datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert access_line._iso(timestamp) == text, timestamp


def test_redaction_finds_what_one_case_insensitive_bearer_found():
    """The redaction patterns spell "bearer" as "b" or "B" and the rest in any case (so each alternative
    starts with a literal): the same matches as ``(?i:bearer)``, with the letters that fold oddly around."""
    import re

    spec = re.compile("|".join([re.escape(SECRET), r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{6,}",
                                r"(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"]))
    redactor = access_line.Redactor([SECRET])
    rng = random.Random(3)
    alphabet = "bBeEaArRsSkK-\u017f\u212a\u0131\u0130 \t\n_x0123456789abcdefABCDEF.~+/="
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(["", "bearer ", "BeArEr\t", "bEARER\n", "sk-", SECRET, "Bearer "]) + text[at:]
        assert redactor.value(text) == spec.sub(access_line.REDACTED, text), text


@pytest.mark.parametrize("secret", [SECRET, "plainsecret42", "plain_secret"])
def test_usual_lines_are_the_json_of_their_fields(monkeypatch, secret):
    """Lines of the usual shape (made in fewer steps) and the near misses that are made field by field; with
    a secret that is letters and digits or an identifier, plain-looking ids are searched too."""
    raw = provider_config("http://127.0.0.1:9")
    raw["providers"]["anthropic"]["api_key"] = secret
    config = build_config(raw, "test-config")
    log = access_log.ccproxy_configure(config, PluginSettings("access_log", {}, "test-config")).lines
    assert log.redactor.plain is (secret == SECRET)
    made_field_by_field = []
    attempt = log.attempt
    monkeypatch.setattr(log, "attempt", lambda a: made_field_by_field.append(a) or attempt(a))
    rng = random.Random(29)

    def pick(values: list[Any]) -> Any:  # mostly the first value
        return values[0] if rng.random() < 0.8 else rng.choice(values)

    ids = ["0123456789abcdef0123456789abcdef", "req_011CUpstream", "\u00e9t\u00e9_1", "gone-1", f"id{secret}x",
           "Bearer abcdefghijk", None, 17, "a\"b"]
    seconds = [0.0012345, 0.25, 12.0, 1e9, 1e10, 1e11, math.nan, math.inf, 0.00025, 0.00015]
    for n in range(6000):
        started = 1_700_000_000 + n // 1000 + pick([0.0005, 0.123456, 0.9999996, 0.9994999])
        ctx = RequestContext(pick(ids[:6]), "POST", "/v1/messages", "anthropic", started_at=started,
                             model="claude-x", model_requested="claude-x", provider="anthropic",
                             upstream_dialect="anthropic", status=200, upstream_status=200, outcome="completed")
        ctx.response_headers = {"request-id": pick(ids)} if rng.random() < 0.9 else {}
        ctx.t_upstream_headers, ctx.t_first_byte, ctx.duration = (rng.uniform(0, 2) if rng.random() < 0.9
                                                                  else pick(seconds) for _ in range(3))
        ctx.bytes_sent, ctx.events_sent = pick([512, 0, True, 2.5]), pick([0, 3, False])
        ctx.usage = rng.choice([None, Usage(12, 30, 0, 0)])
        ctx.usage_partial, ctx.cost = pick([False, True, 1]), rng.choice([None, 0.00123, pick([7e-05, math.nan])])
        ctx.attempts.append(Attempt(pick(["anthropic", f"p{n % 50}"]), "claude-x", "http://u", pick([200, 529, True]),
                                    pick([None, "boom"]), None, pick(seconds)))
        if rng.random() < 0.03:
            ctx.attempts.append(Attempt("openai", "gpt-x", "http://u", 200, None, None, 0.5))
        assert log.line(log.fields(ctx, {})) == expected(log, ctx)
    assert 1000 < len(made_field_by_field) < 4500  # many lines were made the usual way, not all
