"""Per-provider TLS trust, the proxy environment and pool settings, for both transports (issue 10).

Real sockets on 127.0.0.1: an HTTPS upstream with a certificate made by the test, a tiny
forward proxy that records what it relayed, and a keep-alive upstream that counts
connections.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from ccproxy_core import create_app
from ccproxy_core.config import ProviderConfig, build_config
from ccproxy_core.errors import ConfigError
from ccproxy_core.server import default_transport
from tests.socket_upstream import SocketUpstream
from tests.servers import ProxyThread
from tests.test_transport import PROXY_VARS, tls_cert  # noqa: F401 (a fixture)

BODY = b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}'
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(BODY), BODY)
ANTHROPIC = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def _clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


class Upstream(SocketUpstream):
    """A keep-alive upstream in a thread (TLS when given a context). ``gate`` holds answers
    until set; ``connections`` counts connections (after their TLS handshake), ``eofs`` the
    ones the client closed."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.tls = tls
        self.gate = threading.Event()
        self.gate.set()
        self.connections = 0
        self.eofs = 0
        self.requests: list[bytes] = []
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.gate.set()

    def serve(self, conn: socket.socket, number: int) -> None:
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        try:
            self.connections += 1
            buf = b""
            while (request := self.read_request(conn, buf)) is not None:
                head, _, buf = request
                self.requests.append(head.split(b"\r\n", 1)[0])
                self.gate.wait(10)
                conn.sendall(OK)
            self.eofs += 1
        finally:
            conn.close()


def app_config(url: str, transport: str, **provider: Any) -> dict[str, Any]:
    return {
        "providers": {
            "up": {"format": "anthropic", "base_url": url, "requires_key": False, "models": ["claude-*"],
                   "transport": transport, **provider},
        },
        "retries": {"max_attempts": 1},
        "timeouts": {"connect": 2, "headers": 5, "idle": 5, "total": 20},
    }


def post(proxy: ProxyThread) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=15, trust_env=False) as client:
        return client.post("/v1/messages", json=ANTHROPIC)


# -- TLS ----------------------------------------------------------------------------


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_ca_file_is_trusted_instead_of_the_default_store(transport: str, tls_cert: tuple[Path, Path]) -> None:  # noqa: F811
    cert, key = tls_cert
    with Upstream(server_context(cert, key)) as upstream:
        with ProxyThread(app_config(upstream.url, transport, ca_file=str(cert))) as proxy:
            r = post(proxy)
        assert r.status_code == 200 and r.json()["id"] == "msg_1"
        with ProxyThread(app_config(upstream.url, transport)) as proxy:  # certifi's store: not trusted
            r = post(proxy)
        assert r.status_code == 502 and r.json()["type"] == "error"
        assert upstream.requests == [b"POST /v1/messages HTTP/1.1"]


def test_both_transports_get_the_same_store_by_default() -> None:
    provider = ProviderConfig(format="anthropic", base_url="https://api.example.test", name="p")
    fast = default_transport(provider)
    stock = default_transport(ProviderConfig(format="anthropic", base_url="https://api.example.test", name="p",
                                             transport="httpx"))
    certifi_store = httpx.create_ssl_context().get_ca_certs()
    assert fast._ssl_context.get_ca_certs() == certifi_store  # type: ignore[attr-defined]
    assert stock._pool._ssl_context.get_ca_certs() == certifi_store  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "content, problem",
    [(None, "No such file or directory"), (b"not a certificate\n", "not a PEM file of CA certificates")],
)
def test_bad_ca_file_is_one_config_line_at_start_up(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    config = build_config(app_config("https://api.example.test", "fast", ca_file=str(path)), "ccproxy.yaml")
    with pytest.raises(ConfigError) as info:
        create_app(config, entry_points=False)
    message = str(info.value)
    assert message == f"ccproxy.yaml: providers.up.ca_file: cannot load {str(path)!r}: {problem}"
    assert "\n" not in message


# -- the proxy environment -----------------------------------------------------------


class ForwardProxy:
    """An HTTP forward proxy (absolute-form requests only) that records each request line it relays."""

    def __init__(self) -> None:
        self.relayed: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self._loop
        ).result(5)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self.server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.relayed.append(line)
                length = next(
                    (int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
                )
                body = await reader.readexactly(length)
                target = httpx.URL(line.split(b" ")[1].decode())
                up_reader, up_writer = await asyncio.open_connection(target.host, target.port)
                up_writer.write(head + body)
                response = await up_reader.readuntil(b"\r\n\r\n")
                size = next(int(h.split(b":", 1)[1]) for h in response.split(b"\r\n") if h.lower().startswith(b"content-length:"))
                writer.write(response + await up_reader.readexactly(size))
                up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_http_proxy_and_no_proxy_from_the_environment(transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Upstream() as upstream, ForwardProxy() as forward:
        monkeypatch.setenv("HTTP_PROXY", forward.url)
        with ProxyThread(app_config(upstream.url, transport)) as proxy:
            assert post(proxy).status_code == 200
        assert forward.relayed == [f"POST {upstream.url}/v1/messages HTTP/1.1".encode()]
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        with ProxyThread(app_config(upstream.url, transport)) as proxy:
            assert post(proxy).status_code == 200
        assert len(forward.relayed) == 1  # NO_PROXY: straight to the upstream
        assert upstream.requests[-1] == b"POST /v1/messages HTTP/1.1"


# -- pool settings ---------------------------------------------------------------------


def provider(url: str, transport: str, **settings: Any) -> ProviderConfig:
    return ProviderConfig(format="anthropic", base_url=url, name="up", transport=transport, **settings)


async def send(transport: httpx.AsyncBaseTransport, url: str, pool: float = 5.0) -> httpx.Response:
    timeouts = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": pool}
    request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": timeouts})
    return await transport.handle_async_request(request)


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_max_connections_makes_a_second_request_wait_then_pool_timeout(transport: str) -> None:
    async def main() -> None:
        t = default_transport(provider(upstream.url, transport, max_connections=1))
        first = asyncio.ensure_future(send(t, upstream.url))
        while not upstream.requests:  # the only connection is busy with the first request
            await asyncio.sleep(0.01)
        with pytest.raises(httpx.PoolTimeout):
            await send(t, upstream.url, pool=0.2)
        upstream.gate.set()
        r = await first
        await r.aread()
        r = await send(t, upstream.url)  # the connection is free again
        await r.aread()
        await t.aclose()

    with Upstream() as upstream:
        upstream.gate.clear()
        asyncio.run(asyncio.wait_for(main(), 10))
        assert upstream.connections == 1


def test_pool_timeout_through_the_app_is_a_504() -> None:
    with Upstream() as upstream:
        upstream.gate.clear()
        config = app_config(upstream.url, "fast", max_connections=1)
        config["timeouts"]["connect"] = 0.3
        with ProxyThread(config) as proxy:
            with httpx.Client(base_url=proxy.url, timeout=15, trust_env=False) as client:
                holder = threading.Thread(target=client.post, args=("/v1/messages",), kwargs={"json": ANTHROPIC})
                holder.start()
                while not upstream.requests:
                    threading.Event().wait(0.01)
                with httpx.Client(base_url=proxy.url, timeout=15, trust_env=False) as other:
                    r = other.post("/v1/messages", json=ANTHROPIC)
                upstream.gate.set()
                holder.join(10)
        assert r.status_code == 504 and r.json()["type"] == "error"
        assert len(upstream.requests) == 1


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_keepalive_expiry_closes_idle_connections(transport: str) -> None:
    async def main() -> None:
        t = default_transport(provider(upstream.url, transport, keepalive_expiry=0.2))
        await (await send(t, upstream.url)).aread()
        await asyncio.sleep(0.5)
        await (await send(t, upstream.url)).aread()
        await t.aclose()

    with Upstream() as upstream:
        asyncio.run(asyncio.wait_for(main(), 10))
        assert upstream.connections == 2
        if transport == "fast":  # a timer closes it; httpcore closes it when the pool is next used
            assert upstream.eofs >= 1
