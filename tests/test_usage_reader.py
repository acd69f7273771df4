"""The usage plugin's StreamReader reads what parsing every event would, from reads split anywhere."""

from __future__ import annotations

import json
import random

import pytest

from ccproxy_core import ANTHROPIC, DECODABLE_CODINGS, OPENAI, RESPONSES, RequestContext, SSEParser
from ccproxy_core.decoding import decoder_for
from ccproxy_plugins.usage import StreamReader, read_event
from tests.test_bounds_upstream import Hostile, ProxyThread, chunked, claude_request, config, fetch


def sse(*events: tuple[str | None, object]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n")
    return "".join(out).encode()


ANTHROPIC_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 12, "cache_read_input_tokens": 3,
                                                                      "output_tokens": 1}}}),
    ("ping", {"type": "ping"}),
    *[("content_block_delta", {"type": "content_block_delta", "delta": {"text": f"word {i}" + " error-free" * (i % 5 == 0)}})
      for i in range(20)],
    ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 21}}),
    ("message_stop", {"type": "message_stop"}),
)
ANTHROPIC_ERROR = sse(
    ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
    ("content_block_delta", {"delta": {"text": "hi"}}),
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
)
OPENAI_STREAM = sse(
    *[(None, {"choices": [{"delta": {"content": f"w{i}"}, "finish_reason": None}], "usage": None}) for i in range(20)],
    (None, {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": None}),
    (None, {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5,
                                     "prompt_tokens_details": {"cached_tokens": 3}}}),
    (None, "[DONE]"),
)
OPENAI_ERROR = sse((None, {"choices": [{"delta": {"content": "a"}}]}), (None, {"error": {"message": "boom"}}))
RESPONSES_STREAM = sse(
    ("response.created", {"type": "response.created", "response": {"status": "in_progress"}}),
    *[("response.output_text.delta", {"type": "response.output_text.delta", "delta": f"w{i}"}) for i in range(20)],
    ("response.completed", {"type": "response.completed", "response": {"usage": {
        "input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7}}}),
)
RESPONSES_FAILED = sse(
    ("response.output_text.delta", {"delta": "x"}),
    ("response.failed", {"type": "response.failed", "response": {"error": {"message": "bad"}, "usage": None}}),
)

#: OpenAI's own compact chunks ("usage":null in each, skipped unread), then JSON spaced in ways a
#: compatible server may write it: a usage object or an error must still be read.
OPENAI_COMPACT = sse(*[(None, json.dumps(json.loads(line[6:]), separators=(",", ":")))
                       for line in OPENAI_STREAM.decode().split("\n") if line.startswith("data: {")], (None, "[DONE]"))
OPENAI_SPACED = sse(
    (None, '{"choices":[{"delta":{"content":"a \\"usage\\": {} \\"error\\""}}],"usage":null}'),
    (None, '{"choices":[],"usage" :\t{"prompt_tokens":9,"completion_tokens":2}}'),
)
OPENAI_SPACED_ERROR = sse((None, '{"choices":[{"delta":{"content":"a"}}],"usage":null}'),
                          (None, '{ "error" : {"message": "boom"}}'))

STREAMS = [
    (ANTHROPIC, ANTHROPIC_STREAM), (ANTHROPIC, ANTHROPIC_ERROR), (OPENAI, OPENAI_STREAM), (OPENAI, OPENAI_ERROR),
    (OPENAI, OPENAI_COMPACT), (OPENAI, OPENAI_SPACED), (OPENAI, OPENAI_SPACED_ERROR),
    (RESPONSES, RESPONSES_STREAM), (RESPONSES, RESPONSES_FAILED),
]


def variants(raw: bytes) -> list[bytes]:
    """The stream as sent, with other line ends, a BOM, a multi-line data field, no final blank line."""
    return [
        raw, raw.replace(b"\n", b"\r\n"), raw.replace(b"\n", b"\r"), b"\xef\xbb\xbf" + raw,
        raw.replace(b"data: {", b"data: {\ndata: ", 3), raw[:-1], raw.replace(b"\n\n", b"\n\r\n"),
    ]


def state(ctx: RequestContext) -> tuple[object, ...]:
    return (ctx.usage, ctx.inband_error, ctx.state.get("usage"))


def every_event(dialect: str, reads: list[bytes]) -> tuple[object, ...]:
    """What the plugin's reading did before: every event parsed and read."""
    ctx = RequestContext("r", "POST", "/", dialect, upstream_dialect=dialect)
    parser = SSEParser()
    for data in reads:
        for event in parser.feed(data):
            read_event(ctx, event)
    for event in parser.flush():
        read_event(ctx, event)
    return state(ctx)


@pytest.mark.parametrize("dialect, raw", STREAMS)
def test_stream_reader_reads_what_every_event_gives_however_the_bytes_are_split(dialect, raw):
    rng = random.Random(17)
    for stream in variants(raw):
        parts = stream.split(b"\n\n")
        events = [p + b"\n\n" for p in parts[:-1]] + [parts[-1]]  # whole events, the usual read
        splits = [events, [stream], [stream[i : i + 1] for i in range(len(stream))]]
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12)))
            splits.append([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])])
        for reads in splits:
            ctx = RequestContext("r", "POST", "/", dialect, upstream_dialect=dialect)
            reader = StreamReader(ctx)
            assert b"".join(reader.feed(data) for data in reads) + reader.finish() == stream
            assert state(ctx) == every_event(dialect, reads)
    assert every_event(dialect, [raw])[0] is not None or every_event(dialect, [raw])[1] is not None


@pytest.mark.parametrize("raw", [OPENAI_STREAM, OPENAI_COMPACT, OPENAI_SPACED])
def test_a_reader_with_a_remover_gives_what_the_remover_alone_gives_and_parses_the_usage_chunk_once(raw, monkeypatch):
    """The reader tells its remover which event is the usage chunk (it parsed it): the client's bytes are what
    the remover alone makes of the stream, however it is split, and OpenAI's compact stream read in whole
    events costs one parse, of that chunk."""
    from ccproxy_plugins.usage import UsageChunkRemover

    rng = random.Random(5)
    for stream in variants(raw):
        cuts = [sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12))) for _ in range(20)]
        splits = [[p + b"\n\n" for p in stream.split(b"\n\n")[:-1]], [stream],
                  *([stream[a:b] for a, b in zip([0, *c], [*c, len(stream)])] for c in cuts)]
        for reads in splits:
            alone = UsageChunkRemover()
            want = b"".join(alone.feed(data) for data in reads) + alone.finish()
            ctx = RequestContext("r", "POST", "/", OPENAI, upstream_dialect=OPENAI)
            reader = StreamReader(ctx, UsageChunkRemover())
            assert b"".join(reader.feed(data) for data in reads) + reader.finish() == want
            assert state(ctx) == every_event(OPENAI, reads) and b'"choices":[]' not in want.replace(b" ", b"")
    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: parsed.append(text) or loads(text, *a, **k))
    ctx = RequestContext("r", "POST", "/", OPENAI, upstream_dialect=OPENAI)
    reader = StreamReader(ctx, UsageChunkRemover())
    for event in OPENAI_COMPACT.split(b"\n\n")[:-1]:
        reader.feed(event + b"\n\n")
    assert ctx.usage is not None and len(parsed) == (1 if raw is OPENAI_COMPACT else len(parsed))
    if raw is OPENAI_COMPACT:
        assert '"choices":[]' in parsed[0]


@pytest.mark.parametrize("blank", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n", b"\r\r\n", b"\n\r"])
def test_the_remover_holds_no_event_past_its_blank_line_whatever_the_line_ends(blank):
    """An event read whole leaves the remover at once, whatever mix of line ends makes its blank line (held, a
    stream would reach the client at its end, in memory past the core's bound of one event)."""
    from ccproxy_plugins.usage import UsageChunkRemover

    remover = UsageChunkRemover()
    text = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}' + blank
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1}}' + blank
    assert remover.feed(text) == text.replace(b',"usage":null', b"")
    assert remover.feed(usage) == b"" and remover.feed(b"data: [DONE]" + blank) == b"data: [DONE]" + blank
    assert remover.finish() == b""


@pytest.mark.parametrize("blank", [b"\n\r\n", b"\r\r\n"])
def test_a_stream_with_mixed_line_ends_reaches_the_client_event_by_event(blank):
    """Through the proxy, the ``usage`` plugin's remover on (an OpenAI client streaming without usage): the first
    event reaches the client while the upstream waits for it to, and the usage frame asked for is not shown."""
    import asyncio
    import threading

    import httpx

    from tests.servers import OPENAI_BODY

    seen = threading.Event()
    first = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}' + blank
    rest = [b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}' + blank, b"data: [DONE]" + blank]

    async def play(up: Hostile, writer: asyncio.StreamWriter) -> None:
        await up.write(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                               b"connection: close\r\n\r\n" + b"%x\r\n%s\r\n" % (len(first), first))
        await asyncio.to_thread(seen.wait, 10)  # the client has the first event: now the rest
        for piece in rest:
            await up.write(writer, b"%x\r\n%s\r\n" % (len(piece), piece))
        await up.write(writer, b"0\r\n\r\n")

    with Hostile(play) as up, ProxyThread(config(up.url)) as proxy:
        body = {**OPENAI_BODY, "stream": True}
        body.pop("stream_options", None)
        with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=30) as r:
            got = bytearray()
            for data in r.iter_raw():
                got += data
                if not seen.is_set() and got.endswith(blank):
                    assert bytes(got) == first.replace(b',"usage":null', b"")
                    seen.set()
    assert seen.is_set() and bytes(got) == first.replace(b',"usage":null', b"") + rest[1]


def test_the_remover_gives_the_same_bytes_however_a_stream_of_mixed_line_ends_is_split():
    """Each event with its own line ends and blank line (any two line ends in a row), split anywhere: the
    client gets the same bytes as from whole events, without the usage frame."""
    from ccproxy_plugins.usage import UsageChunkRemover

    rng = random.Random(11)
    ends = [b"\n", b"\r\n", b"\r"]
    for _ in range(300):
        events = [b'data: {"choices":[{"delta":{"content":"w%d"}}],"usage":null}' % i for i in range(rng.randint(1, 4))]
        events += [b'data: {"choices":[],"usage":{"prompt_tokens":1}}', b"data: [DONE]"]
        framed = []
        for event in events:  # a line end, then an empty line's (CR then LF would be one CRLF: not a blank line)
            first = rng.choice(ends)
            framed.append(event + first + rng.choice(ends[1:] if first == b"\r" else ends))
        stream = b"".join(framed)
        whole = UsageChunkRemover()
        want = b"".join(whole.feed(f) for f in framed) + whole.finish()
        assert b'"choices":[]' not in want and b"w0" in want
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 10)))
        remover = UsageChunkRemover()
        got = b"".join(remover.feed(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)])) + remover.finish()
        assert got == want


def test_the_codings_read_are_the_ones_the_core_decodes():
    for coding in ("identity", "gzip", "x-gzip", "deflate", " GZIP ", "br", "zstd", "gzip, br", "compress"):
        assert (decoder_for(coding, 10) is not None) == (coding.strip().lower() in DECODABLE_CODINGS), coding


def test_a_stream_in_a_coding_the_proxy_cannot_decode_passes_through_unread():
    """As with observers only: the upstream ignored the narrowed accept-encoding; the bytes go as sent."""
    opaque = b"\x8b\x01\x80not really brotli\x03"
    with Hostile(chunked(200, lambda: [opaque], encoding="br")) as up, ProxyThread(config(up.url)) as proxy:
        path, body = claude_request("anthropic", stream=True)
        status, headers, content, _ = fetch(proxy.url, path, body)
    assert (status, headers["content-encoding"], content) == (200, "br", opaque)


def test_usage_chunk_remover_cleans_what_every_pattern_in_turn_removes():
    """Removing OpenAI's own ``,"usage":null`` first and the other forms only when one is left gives what
    removing each form in turn gives; the usage frame is dropped whatever the spacing."""
    from ccproxy_plugins.usage import _NULL_USAGE, UsageChunkRemover

    def before(data: bytes) -> bytes:
        if b'"usage":null' in data or b'"usage": null' in data:
            for pattern in _NULL_USAGE:
                data = data.replace(pattern, b"")
        return data

    pieces = [*_NULL_USAGE, b'"usage":null', b'"usage": null', b"{", b"}", b",", b"[]", b'"a":1', b" "]
    rng = random.Random(17)
    for _ in range(5000):
        data = b"data: " + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) + b"\n\n"
        assert UsageChunkRemover()._clean(data) == before(data)
    for data in (b'data: {"choices":[],"usage":null}\n\n', b'data: {"a":1}\n\ndata: {"choices":[],"usage":null}\n\n'):
        assert UsageChunkRemover()._clean(data) == before(data) == data.replace(b',"usage":null', b"")
    for spacing in (b'"choices":[]', b'"choices": []'):
        frame = b'data: {' + spacing + b',"usage":{"prompt_tokens":1}}\n\n'
        chunk = b'data: {"choices":[{"delta":{}}],"usage":null}\n\n'
        assert UsageChunkRemover().feed(chunk + frame + b"data: [DONE]\n\n") == chunk.replace(b',"usage":null', b"") + b"data: [DONE]\n\n"


def test_the_usage_frame_is_removed_only_from_the_streamed_attempt_that_asked_for_it():
    """``requested`` is of the last attempt streamed from the upstream (the marked ``ccproxy_request_body``
    skips the others): an unstreamed fallback answering a stream anyway gets no remover."""
    from ccproxy_plugins.usage import UsagePlugin, PriceTable, ccproxy_response_adapter

    ctx = RequestContext(request_id="x", method="POST", route="/v1/chat/completions", client_dialect=OPENAI)
    ctx.upstream_dialect, ctx.upstream_stream = OPENAI, True
    assert UsagePlugin.ccproxy_request_body.streamed_only is True
    assert UsagePlugin(PriceTable()).ccproxy_request_body(ctx, {"stream": True}) is True
    ctx.response_headers["content-type"] = "text/event-stream"
    assert ccproxy_response_adapter(ctx).remover is not None
    ctx.upstream_stream = False  # a fallback that cannot stream, prepared without the hook
    assert ccproxy_response_adapter(ctx).remover is None
