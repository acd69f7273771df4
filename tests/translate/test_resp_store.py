"""The store of translated Responses exchanges: the per-worker memory bounds (entries, bytes, age), the
per-value bound, expansion and keeping, and the state failing (``on_error``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from ccproxy_core import InvalidRequest, Overloaded, StateUnavailable
from ccproxy_plugins.translate.resp_store import MemoryValues, ResponseStore, expand, keeping


def item(n: int) -> list[dict]:
    return [{"role": "user", "content": "x" * n}]


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_memory_values_bounded_by_entries_bytes_and_age() -> None:
    now = [0.0]
    values = MemoryValues(max_entries=2, max_bytes=200, clock=lambda: now[0])

    async def go() -> None:
        await values.put("a", b"1", 10)
        await values.put("b", b"1", 10)
        await values.put("c", b"1", 10)  # the oldest goes
        assert (await values.get("a"), await values.get("c"), len(values)) == (None, b"1", 2)
        await values.put("big", b"x" * 200, 10)  # bytes: everything older goes
        assert (await values.get("b"), await values.get("c"), len(values)) == (None, None, 1) and values.bytes <= 200
        now[0] = 10.5
        assert await values.get("big") is None and len(values) == 0 and values.bytes == 0

    run(go())


def test_a_value_over_the_bound_is_not_kept_and_says_why() -> None:
    store = ResponseStore(MemoryValues(10, 1 << 20), max_value_bytes=100, ttl=10)

    async def go() -> None:
        await store.put("resp_small", item(10))
        await store.put("resp_huge", item(500))
        assert await store.get("resp_small") == item(10)
        assert len(store.values) == 2 and store.values.bytes < 100  # the marker, not the value
        with pytest.raises(InvalidRequest, match=r"'resp_huge' was not kept: .*\(5\d\d bytes\).*store_max_value_bytes"):
            await store.get("resp_huge")
        with pytest.raises(InvalidRequest, match="'resp_gone' not found"):
            await store.get("resp_gone")

    run(go())


def test_expand_and_keep() -> None:
    store = ResponseStore(MemoryValues(10, 1 << 20), max_value_bytes=1 << 20, ttl=10)
    ctx = SimpleNamespace(state={}, client_dialect="responses")
    assert expand(ctx, {"input": "hi"}, None, store) == {"input": "hi"}
    kept = keeping(ctx, store)
    kept.keep({"id": "resp_1", "status": "completed", "output": [{"type": "message", "role": "assistant",
                                                                   "content": []}]})
    run(kept.settle())
    items = run(store.get("resp_1"))
    body = expand(ctx, {"previous_response_id": "resp_1", "input": [{"role": "user", "content": "more"}]}, items,
                  store)
    assert body == {"input": [{"role": "user", "content": "hi"},
                              {"type": "message", "role": "assistant", "content": []},
                              {"role": "user", "content": "more"}]}
    ctx = SimpleNamespace(state={}, client_dialect="responses")
    expand(ctx, {"input": "secret", "store": False}, None, store)
    assert keeping(ctx, store) is None  # store: false keeps nothing


class Down:
    async def get(self, key: str) -> bytes | None:
        raise StateUnavailable("redis down")

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        raise StateUnavailable("redis down")


def test_state_down_closed_and_open(caplog: pytest.LogCaptureFixture) -> None:
    for fail_open in (False, True):
        store = ResponseStore(Down(), max_value_bytes=100, ttl=10, fail_open=fail_open)
        with pytest.raises(Overloaded, match="cannot be read"):  # a chain that cannot be read: 503 either way
            run(store.get("resp_1"))
    with pytest.raises(Overloaded, match="could not be kept"):
        run(ResponseStore(Down(), max_value_bytes=100, ttl=10).put("resp_1", item(1)))
    run(ResponseStore(Down(), max_value_bytes=100, ttl=10, fail_open=True).put("resp_1", item(1)))
    assert "response resp_1 not kept" in caplog.text
