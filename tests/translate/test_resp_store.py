"""The in-process store of translated Responses exchanges: its bounds (entries, bytes, age) and expansion."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ccproxy_core import InvalidRequest
from ccproxy_plugins.translate.resp_store import MemoryResponseStore, expand, recorder


def item(n: int) -> list[dict]:
    return [{"role": "user", "content": "x" * n}]


def test_bounded_by_entries_bytes_and_age() -> None:
    now = [0.0]
    store = MemoryResponseStore(max_entries=2, max_bytes=200, ttl=10, clock=lambda: now[0])
    store.put("a", item(1))
    store.put("b", item(1))
    store.put("c", item(1))  # the oldest goes
    assert (store.get("a"), store.get("c"), len(store)) == (None, item(1), 2)
    store.put("big", item(150))  # bytes: everything older goes
    assert (store.get("b"), store.get("c"), len(store)) == (None, None, 1) and store.bytes <= 200
    store.put("huge", item(500))  # larger than the whole store: not kept
    assert store.get("huge") is None and store.get("big") == item(150)
    now[0] = 10.5
    assert store.get("big") is None and len(store) == 0 and store.bytes == 0


def test_expand_and_record() -> None:
    store = MemoryResponseStore()
    ctx = SimpleNamespace(state={}, client_dialect="responses")
    assert expand(ctx, {"input": "hi"}, store) == {"input": "hi"}
    recorder(ctx, store)({"id": "resp_1", "status": "completed", "output": [{"type": "message", "role": "assistant",
                                                                             "content": []}]})
    body = expand(ctx, {"previous_response_id": "resp_1", "input": [{"role": "user", "content": "more"}]}, store)
    assert body == {"input": [{"role": "user", "content": "hi"},
                              {"type": "message", "role": "assistant", "content": []},
                              {"role": "user", "content": "more"}]}
    ctx = SimpleNamespace(state={}, client_dialect="responses")
    expand(ctx, {"input": "secret", "store": False}, store)
    assert recorder(ctx, store) is None  # store: false keeps nothing
    with pytest.raises(InvalidRequest, match="resp_gone"):
        expand(ctx, {"previous_response_id": "resp_gone", "input": "x"}, store)
    with pytest.raises(InvalidRequest, match="not found"):
        expand(ctx, {"previous_response_id": "resp_1", "input": "x"}, None)
