"""Model discovery: each provider's own list (fetched with its key, cached, filtered by its globs),
aliases, both shapes, ``GET /v1/models/{id}``, through both official SDKs."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.servers import provider_config

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def catalog(mock, make_proxy):
    config = provider_config(mock.url, models={"sonnet": {"model": "claude-sonnet-4-5"}, "fast": {"model": "gpt-4o-mini"}})
    config["providers"]["local"] = {"format": "openai", "base_url": mock.url + "/nowhere", "requires_key": False,
                                    "models": ["local-llama", "local-*"]}
    config["providers"]["dead"] = {"format": "openai", "base_url": "http://127.0.0.1:1", "requires_key": False,
                                   "models": ["dead-model", "dead-*"]}
    return make_proxy(config)


def _listing_requests(upstream):
    return [r for r in upstream.upstream.requests if r.method == "GET"]


def test_openai_shape_lists_upstream_models_by_globs_with_aliases(catalog, upstream):
    listed = httpx.get(catalog.url + "/v1/models").json()
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    # Aliases first; the mock lists all four models to each provider, each keeps its globs' share;
    # a provider adds its exact names the list lacks; one that cannot list (refused) has only those.
    assert ids == ["sonnet", "fast", "claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o", "gpt-4o-mini", "local-llama",
                   "dead-model"]
    by_id = {m["id"]: m for m in listed["data"]}
    assert by_id["gpt-4o"] == {"id": "gpt-4o", "object": "model", "created": 1727740800, "owned_by": "openai"}
    assert by_id["claude-haiku-4-5"]["created"] == 1759104000  # the upstream's 2025-09-29T00:00:00Z
    assert by_id["fast"]["created"] == 1727740800 and by_id["fast"]["owned_by"] == "openai"
    assert by_id["local-llama"]["created"] == 0  # unknown, said so in the docs
    sent = sorted((r.path, r.header("x-api-key") or "", r.header("authorization") or "", bool(r.header("anthropic-version")))
                  for r in _listing_requests(upstream))
    assert sent == [("/nowhere/models", "", "", False),  # no key configured, none sent
                    ("/v1/models", "", "Bearer sk-openai-upstream-SECRET", False),
                    ("/v1/models", "sk-ant-upstream-SECRET", "", True)]


def test_anthropic_shape_when_anthropic_version_is_sent(catalog):
    listed = httpx.get(catalog.url + "/v1/models", headers=ANTHROPIC_HEADERS).json()
    assert set(listed) == {"data", "has_more", "first_id", "last_id"} and listed["has_more"] is False
    assert listed["first_id"] == "sonnet" and listed["last_id"] == "dead-model"
    haiku = next(m for m in listed["data"] if m["id"] == "claude-haiku-4-5")
    assert haiku == {"type": "model", "id": "claude-haiku-4-5", "display_name": "claude-haiku-4-5",
                     "created_at": "2025-09-29T00:00:00Z"}
    assert next(m for m in listed["data"] if m["id"] == "local-llama")["created_at"] == "1970-01-01T00:00:00Z"


def test_lists_are_cached(catalog, upstream):
    for _ in range(3):
        httpx.get(catalog.url + "/v1/models")
    assert len(_listing_requests(upstream)) == 3  # once per provider (anthropic, openai, local)


def test_ttl_zero_fetches_every_time(mock, make_proxy, upstream):
    server = make_proxy(provider_config(mock.url, model_list_ttl=0))
    httpx.get(server.url + "/v1/models")
    httpx.get(server.url + "/v1/models")
    assert len(_listing_requests(upstream)) == 4


def test_retrieve_and_unknown_model_in_the_clients_dialect(catalog):
    assert httpx.get(catalog.url + "/v1/models/gpt-4o").json()["owned_by"] == "openai"
    assert httpx.get(catalog.url + "/v1/models/sonnet", headers=ANTHROPIC_HEADERS).json()["type"] == "model"
    missing = httpx.get(catalog.url + "/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    missing = httpx.get(catalog.url + "/v1/models/nope", headers=ANTHROPIC_HEADERS)
    assert missing.status_code == 404 and missing.json()["type"] == "error"


def test_sdks_list_and_retrieve(catalog):
    claude = anthropic.Anthropic(base_url=catalog.url, api_key="x", max_retries=0)
    ids = [m.id for m in claude.models.list()]
    assert "claude-sonnet-4-5" in ids and "sonnet" in ids
    model = claude.models.retrieve("claude-haiku-4-5")
    assert model.type == "model" and model.created_at.year == 2025
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("nope")
    gpt = openai.OpenAI(base_url=catalog.url + "/v1", api_key="x", max_retries=0)
    assert "gpt-4o-mini" in [m.id for m in gpt.models.list()]
    assert gpt.models.retrieve("gpt-4o").created == 1727740800
    with pytest.raises(openai.NotFoundError):
        gpt.models.retrieve("nope")
