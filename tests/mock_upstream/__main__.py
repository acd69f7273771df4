"""Run the mock standalone: ``python -m tests.mock_upstream [--port 9999] [--tls-port 0 --cert C --key K]``.

Prints one JSON line once listening (``{"url": …, "port": …, "tls_port": …, "pid": …}``) and runs
until interrupted, SIGTERM, ``--max-seconds``, or (``--watch-stdin``) until its stdin closes: the
benchmark holds it open, so the mock goes when the benchmark dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import Sequence

from tests.mock_upstream.server import MockUpstream


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def _stop(*_: object) -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    if args.max_seconds:
        loop.call_later(args.max_seconds, _stop)
    servers = [MockUpstream(args.host, args.port, record=False)]
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        servers.append(MockUpstream(args.host, args.tls_port, ssl=context, record=False))
    for server in servers:
        await server.start()
    info = {"url": servers[0].url, "port": servers[0].port, "pid": os.getpid()}
    if args.cert:
        info["tls_port"] = servers[1].port
    if args.watch_stdin:
        def _on_stdin() -> None:
            if not os.read(0, 4096):
                loop.remove_reader(0)
                _stop()

        loop.add_reader(0, _on_stdin)
    print(json.dumps(info), flush=True)
    try:
        await stop
    finally:
        for server in servers:
            await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.mock_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--cert", help="PEM certificate: also serve TLS on --tls-port")
    parser.add_argument("--key", help="PEM private key for --cert")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (when the machine has it)")
    parser.add_argument("--max-seconds", type=float, default=0, help="stop after this long (0: never)")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity") and args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop
    except ImportError:  # the standard library's loop will do outside the project's venv
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(args))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
