"""An example ccproxy plugin: a configurable response header and streamed-event counts.

Installed, it is found through its entry point (``[project.entry-points.ccproxy]``
``example = "ccproxy_example_plugin"``); its settings live under ``plugins: example:``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sanic import Request, Sanic, response

from ccproxy_core import PluginSettings, RequestContext, SSEEvent, hookimpl

__version__ = "0.1.0"


@dataclass
class Settings:
    """``plugins: example:`` in the YAML; every key is optional."""

    header_value: str = "hello"
    header_name: str = "x-example"


@dataclass
class Stats:
    """Counted in this worker process since it started."""

    requests: int = 0
    streams: int = 0
    events: Counter[str] = field(default_factory=Counter)


SETTINGS = Settings()
STATS = Stats()


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> None:
    global SETTINGS, STATS
    loaded = settings.load(Settings)  # unknown keys and wrong types stop start-up, naming the key
    name = loaded.header_name.strip().lower()
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise settings.error("header_name", f"not a valid header name: {loaded.header_name!r}")
    if "\n" in loaded.header_value or "\r" in loaded.header_value:
        raise settings.error("header_value", "must be one line")
    SETTINGS = Settings(header_value=loaded.header_value, header_name=name)
    STATS = Stats()


@hookimpl
def ccproxy_register_routes(app: Sanic) -> None:
    @app.get("/example/stats", name="example_stats")
    async def stats(request: Request) -> response.HTTPResponse:
        return response.json(
            {"requests": STATS.requests, "streams": STATS.streams, "events": sum(STATS.events.values()),
             "by_type": dict(STATS.events)}
        )


@hookimpl
def ccproxy_upstream_headers(headers: dict[str, str]) -> None:
    headers[SETTINGS.header_name] = SETTINGS.header_value


@hookimpl
def ccproxy_stream_event(event: SSEEvent) -> None:
    # OpenAI events have no ``event:`` line; SSE calls that type "message".
    STATS.events[event.event or "message"] += 1


@hookimpl
def ccproxy_stream_end(ctx: RequestContext) -> None:
    STATS.requests += 1
    if ctx.stream:
        STATS.streams += 1

