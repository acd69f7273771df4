"""The per-request context handed to every request-phase hook."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ProxyError

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

ANTHROPIC = "anthropic"
OPENAI = "openai"
RESPONSES = "responses"  # the OpenAI Responses API
DIALECTS = (ANTHROPIC, OPENAI, RESPONSES)

#: ``ctx.outcome`` values.
COMPLETED = "completed"
CLIENT_DISCONNECTED = "client_disconnected"
UPSTREAM_ERROR = "upstream_error"
REJECTED = "rejected"


@dataclass(slots=True, eq=False)
class Attempt:
    """One try at one provider (fallback and retries add more)."""

    provider: str
    model: str
    url: str
    status: int | None = None
    #: What went wrong, for people (the message of the error, or None).
    error: str | None = None
    #: What went wrong, for programs: one of ``ccproxy_core.errors.ERROR_KINDS`` (``status`` for an
    #: error status), None when the attempt answered below 400.
    error_kind: str | None = None
    #: Seconds from the request's start to the upstream's headers (or failure).
    elapsed: float | None = None
    #: Seconds waited (backoff or ``retry-after``) before this attempt was sent.
    delay: float = 0.0


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them, in Anthropic's meaning: ``input_tokens`` are
    the input tokens billed at the full input price (OpenAI's cached tokens are
    ``cache_read_input_tokens``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """The four counts by name."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


@dataclass(slots=True, eq=False)
class RequestContext:
    """What the core knows about one client request; plugins read it and may add to ``state``.

    Times are seconds since ``started`` (``time.perf_counter()``); None until they happen.
    """

    request_id: str
    method: str
    route: str
    client_dialect: str
    started: float = field(default_factory=time.perf_counter)
    #: Wall-clock start (``time.time()``), for logs.
    started_at: float = field(default_factory=time.time)
    #: The client's parsed JSON body (None until parsed, or for non-JSON routes).
    body: dict[str, Any] | None = None
    #: The client asked for a stream (``"stream": true``).
    stream: bool = False
    #: A token count (``POST /v1/messages/count_tokens``), not a generation: nothing is billed,
    #: the answer is ``{"input_tokens": N}`` and carries no usage.
    counting: bool = False
    #: The upstream is asked to stream: ``stream`` and the provider has ``supports_streaming``.
    #: When the client asked for a stream and this is False, the answer is JSON that a
    #: response adapter turns into a stream in the client's dialect.
    upstream_stream: bool = False
    model_requested: str | None = None
    #: The model name sent upstream (differs from ``model_requested`` for aliases).
    model: str | None = None
    provider: str | None = None
    upstream_dialect: str | None = None
    upstream_url: str | None = None
    upstream_status: int | None = None
    #: The status the client gets (hooks may change it before the head is written).
    status: int | None = None
    #: The headers the client gets (lower-case names), filled when the upstream answers.
    response_headers: dict[str, str] = field(default_factory=dict)
    t_upstream_headers: float | None = None
    t_first_byte: float | None = None
    duration: float | None = None
    bytes_sent: int = 0
    chunks_sent: int = 0
    events_sent: int = 0
    outcome: str | None = None
    error: ProxyError | None = None
    #: Token counts as the upstream reported them; None until it reported any (filled by the
    #: ``usage`` plugin, final when ``ccproxy_stream_end`` runs).
    usage: Usage | None = None
    #: The closing numbers never came although some were counted or the request was cut short.
    usage_partial: bool = False
    #: US dollars for ``usage`` (None without usage or a price), set before other ``ccproxy_stream_end`` hooks run.
    cost: float | None = None
    #: The message of an error event the upstream sent inside a stream (Anthropic ``event: error``,
    #: OpenAI ``data: {"error": ...}``), or None.
    inband_error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    #: The name of the client key that authorised the request (set by the ``auth`` plugin; never the key).
    client_key: str | None = None
    #: Scratch space for plugins, keyed by plugin name.
    state: dict[str, Any] = field(default_factory=dict)
    #: The deployment's configuration (``config.plugin_settings(name)`` for a plugin's own).
    config: Config | None = None

    @property
    def translated(self) -> bool:
        """True when the client and the upstream speak different dialects."""
        return self.upstream_dialect is not None and self.upstream_dialect != self.client_dialect

    def elapsed(self) -> float:
        """Seconds since the request started."""
        return time.perf_counter() - self.started
