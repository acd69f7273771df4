"""The incremental SSE parser and encoder (ccproxy_core.sse)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core.sse import SSEEvent, SSEParser, encode_event


def parse(*pieces: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events + parser.flush()


def test_whole_events_in_one_read() -> None:
    raw = b'event: message_start\ndata: {"a":1}\n\nevent: ping\ndata: {"type": "ping"}\n\n'
    assert SSEParser().feed(raw) == [
        SSEEvent("message_start", '{"a":1}'),
        SSEEvent("ping", '{"type": "ping"}'),
    ]


def test_line_endings_crlf_cr_lf_and_mixed() -> None:
    for sep in (b"\n", b"\r\n", b"\r"):
        raw = b"event: x" + sep + b"data: 1" + sep + sep + b"data: 2" + sep + sep
        assert parse(raw) == [SSEEvent("x", "1"), SSEEvent(None, "2")], sep
    assert parse(b"data: a\r\ndata: b\rdata: c\n\r\n") == [SSEEvent(None, "a\nb\nc")]


def test_cr_then_lf_in_the_next_read_is_one_line_end() -> None:
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SSEEvent(None, "a\nb")]
    # but \r then \r is two line ends: a blank line dispatches
    assert parse(b"data: a\r", b"\rdata: b\r\r") == [SSEEvent(None, "a"), SSEEvent(None, "b")]


def test_cr_at_end_then_empty_read_then_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [SSEEvent(None, "a")]


def test_comments_ignored_and_multiple_data_lines_joined() -> None:
    raw = b": keep-alive\n\ndata: first\n: inner comment\ndata: second\ndata:\ndata:third\n\n"
    assert parse(raw) == [SSEEvent(None, "first\nsecond\n\nthird")]


def test_only_one_space_after_colon_is_stripped() -> None:
    assert parse(b"data:  two spaces\n\n") == [SSEEvent(None, " two spaces")]
    assert parse(b"event:x\ndata:y\n\n") == [SSEEvent("x", "y")]


def test_field_without_colon_and_unknown_fields() -> None:
    assert parse(b"data\n\n") == [SSEEvent(None, "")]
    assert parse(b"foo: bar\ndata: x\nevent\n\n") == [SSEEvent(None, "x")]


def test_event_without_data_is_not_dispatched() -> None:
    assert parse(b"event: ping\n\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_id_and_retry() -> None:
    assert parse(b"id: 7\nretry: 1500\ndata: x\n\n") == [SSEEvent(None, "x", "7", 1500)]
    assert parse(b"id: a\x00b\nretry: 1.5\ndata: x\n\n") == [SSEEvent(None, "x", None, None)]
    # fields do not leak into the next event
    assert parse(b"event: e\nid: 1\ndata: x\n\ndata: y\n\n")[1] == SSEEvent(None, "y")


def test_utf8_split_across_reads() -> None:
    raw = "data: héllo 👋 日本\n\n".encode()
    for cut in range(len(raw) + 1):
        assert parse(raw[:cut], raw[cut:]) == [SSEEvent(None, "héllo 👋 日本")], cut


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse(b"data: \xff\n\n") == [SSEEvent(None, "\ufffd")]


def test_bom_skipped_only_at_start() -> None:
    assert parse(b"\xef\xbb", b"\xbfdata: x\n\n") == [SSEEvent(None, "x")]
    assert parse(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [SSEEvent(None, "x")]  # a field named BOM+data


def test_flush_dispatches_unterminated_event_with_data() -> None:
    assert parse(b"data: [DONE]") == [SSEEvent(None, "[DONE]")]
    assert parse(b"data: [DONE]\n") == [SSEEvent(None, "[DONE]")]
    assert parse(b"data: [DONE]\r") == [SSEEvent(None, "[DONE]")]
    assert parse(b"event: x\n") == []  # no data: discarded
    assert parse(b"data: a\n\n: comment") == [SSEEvent(None, "a")]


def test_flush_resets_the_parser() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\ndata: b")
    assert parser.flush() == [SSEEvent(None, "a\nb")]
    assert parser.flush() == []
    assert parser.feed(b"data: c\n\n") == [SSEEvent(None, "c")]


BOM = b"\xef\xbb\xbf"


def test_passes_only_whole_events_to_a_parser_that_holds_nothing() -> None:
    parser = SSEParser()
    whole = b"data: a\n\ndata: b\n\n"
    assert parser.passes(whole) and parser.passes(whole)
    assert len(parser.feed(whole)) == 2 and parser.passes(whole)
    assert not parser.passes(b"data: a\n") and not parser.passes(b"data: a\r\n\r\n")
    assert not parser.passes(b"data: a\n\r\n\n")  # a carriage return anywhere
    parser.passes(whole)  # asking changes nothing
    assert parser.feed(b"data: c\n") == [] and not parser.passes(whole)  # half an event held
    assert [e.data for e in parser.feed(b"\n")] == ["c"] and not parser.passes(whole)  # (this read ended no blank line)
    parser.feed(b"data: d\n\n")
    assert parser.passes(whole)
    assert parser.feed(b"data: e\r") == [] and not parser.passes(whole)
    parser.feed(b"\n\n")
    assert parser.passes(whole)
    parser.flush()
    assert not parser.passes(BOM + whole)  # a new stream: a byte-order mark opening it is the parser's to skip
    assert [e.data for e in parser.feed(BOM + whole)] == ["a", "b"]


def test_a_first_read_passed_leaves_the_parser_as_feeding_it_would() -> None:
    """Past the stream's first read a byte-order mark is no longer skipped, whether that read was fed or passed."""
    for skip in (False, True):
        parser = SSEParser()
        first = b"data: a\n\n"
        if not (skip and parser.passes(first)):
            assert [e.data for e in parser.feed(first)] == ["a"]
        assert parser.feed(BOM + b"data: b\n\ndata: c\n\n") == [SSEEvent(None, "c")]  # "\ufeffdata" is no field


def test_encode_event() -> None:
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event("x", "ping") == b"event: ping\ndata: x\n\n"
    assert encode_event("a\nb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"
    assert encode_event("", id="3", retry=10) == b"id: 3\nretry: 10\ndata: \n\n"


# -- Properties --------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30)
_events = st.lists(
    st.builds(
        SSEEvent,
        event=st.one_of(st.none(), _text.filter(lambda s: s != "" and not s.startswith(" "))),
        data=st.lists(_text, min_size=1, max_size=4).map("\n".join),
    ),
    max_size=8,
)


def _wire(events: list[SSEEvent], newline: bytes) -> bytes:
    return b"".join(encode_event(e.data, e.event) for e in events).replace(b"\n", newline)


def _split(raw: bytes, data: st.DataObject) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=30)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]


@settings(max_examples=300)
@given(events=_events, newline=st.sampled_from([b"\n", b"\r\n", b"\r"]), data=st.data())
def test_encode_then_parse_round_trips_under_any_split(
    events: list[SSEEvent], newline: bytes, data: st.DataObject
) -> None:
    assert parse(*_split(_wire(events, newline), data)) == events


@settings(max_examples=300)
@given(raw=st.binary(max_size=200), data=st.data())
def test_arbitrary_bytes_never_crash_and_resplit_identically(raw: bytes, data: st.DataObject) -> None:
    assert parse(*_split(raw, data)) == parse(raw)


@settings(max_examples=300)
@given(
    lines=st.lists(st.sampled_from([b"data: \xc3\xa9\xf0\x9f\x91\x8b", b"event: e", b": c", b"", b"id: 1", b"data"]), max_size=20),
    newlines=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=20, max_size=20),
    data=st.data(),
)
def test_mixed_line_ends_resplit_identically(lines: list[bytes], newlines: list[bytes], data: st.DataObject) -> None:
    raw = b"".join(line + nl for line, nl in zip(lines, newlines))
    assert parse(*_split(raw, data)) == parse(raw)


def _reference(raw: bytes) -> list[SSEEvent]:
    """A slow, literal reading of the spec (plus the documented flush rule)."""
    import re

    text = raw.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    if lines[-1] == "":
        lines.pop()
    events, event, data, id_, retry = [], None, None, None, None
    for line in lines:
        if line == "":
            if data is not None:
                events.append(SSEEvent(event, "\n".join(data), id_, retry))
            event, data, id_, retry = None, None, None, None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value or None
        elif field == "data":
            data = [*(data or []), value]
        elif field == "id" and "\0" not in value:
            id_ = value
        elif field == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    if data is not None:
        events.append(SSEEvent(event, "\n".join(data), id_, retry))
    return events


@settings(max_examples=500)
@given(
    raw=st.lists(
        st.sampled_from([b"data", b"data:", b"data: x", b"event: e", b":", b" ", b"id: 1", b"retry: 5", b"\r", b"\n", b"\r\n", b"\xc3\xa9", b"\xc3", b"\xef\xbb\xbf", b"\x00"]),
        max_size=40,
    ).map(b"".join),
    data=st.data(),
)
def test_matches_the_reference_reading(raw: bytes, data: st.DataObject) -> None:
    assert parse(*_split(raw, data)) == _reference(raw)
