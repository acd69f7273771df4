"""What the team gateway's own work costs per request, in-process, for each state backend.

Usage::

    .venv/bin/python bench/gateway_overhead.py [--redis redis://127.0.0.1:6379/0] [--requests 20000]

Calls the gateway's two per-request hooks (``ccproxy_request_received``: the allow-list and the
atomic check-and-count; ``ccproxy_stream_end``: adding tokens and spend) on one key with every
limit set, as a request would, and reports CPU time (``time.process_time``) per request. The
hooks' calling through pluggy and the rest of the request are not included: ``bench/ab.py
--variant off=%off --variant memory=%memory`` measures the whole request side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccproxy_core import RequestContext, Usage  # noqa: E402
from ccproxy_core.config import StateSettings  # noqa: E402
from ccproxy_core.state import open_state  # noqa: E402
from ccproxy_plugins.auth import AuthSettings, ClientKey  # noqa: E402
from ccproxy_plugins.gateway import GatewayPlugin  # noqa: E402


async def per_request(settings: StateSettings, n: int) -> float:
    gateway = GatewayPlugin([ClientKey("team-0", "k", rpm=10**12, tpm=10**15, budget_usd=1e12)], AuthSettings(), ())
    gateway.state = open_state(settings)
    ctx = RequestContext("id", "POST", "/v1/messages", "anthropic", client_key="team-0", model_requested="claude-x")
    ctx.usage, ctx.cost = Usage(1000, 200), 0.006
    try:
        for i in range(n // 10 + 1 + n):
            if i == n // 10 + 1:
                started = time.process_time()
            await gateway.ccproxy_request_received(ctx)
            gateway.ccproxy_stream_end(ctx)  # a plain call, as the core makes it
        return (time.process_time() - started) / n * 1e6
    finally:
        await gateway.state.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("memory", StateSettings(), args.requests),
                    ("sqlite", StateSettings(backend="sqlite", path=f"{tmp}/state.db"), args.requests // 10)]
        if args.redis:
            backends.append(("redis", StateSettings(backend="redis", url=args.redis), args.requests // 10))
        print("gateway CPU per request (check-and-count + add), one key with rpm, tpm and a budget:")
        for name, settings, n in backends:
            print(f"  {name:<8} {await per_request(settings, n):8.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="a Redis URL to measure the redis backend against")
    parser.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(parser.parse_args()))
