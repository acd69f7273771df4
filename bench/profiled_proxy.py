"""``sanic app.app --single-process`` with a profiler or an experiment (bench/profile_phase.py, bench/ab.py).

    CCPROXY_CONFIG=... python bench/profiled_proxy.py --port 8000 [--out proxy.prof] [--patch experiment.py]

``--out``: cProfile, switched on by SIGUSR1; SIGUSR2 stops it and writes ``--out``
(pstats format). ``--patch``: a Python file executed before ``app`` is imported, to try a
change to the hot path (monkeypatching) without editing the project. Everything else is
the normal app on Sanic's runner, single process, access logs off (Sanic's default).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import signal
import sys

sys.path.insert(0, os.getcwd())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", help="write a cProfile of the SIGUSR1..SIGUSR2 window here")
    parser.add_argument("--patch", help="a Python file run before the app is imported")
    args = parser.parse_args()
    if args.patch:
        with open(args.patch) as fh:
            exec(compile(fh.read(), args.patch, "exec"), {"__name__": "__patch__"})

    import app as module

    app = module.app
    profiler = cProfile.Profile()

    if args.out:
        app.after_server_start(_signals_listener(profiler, args.out))
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False)


def _signals_listener(profiler: cProfile.Profile, out: str):  # type: ignore[no-untyped-def]
    async def _signals(app, loop=None) -> None:  # type: ignore[no-untyped-def]
        import asyncio

        loop = asyncio.get_running_loop()

        def start() -> None:
            profiler.enable()

        def stop() -> None:
            profiler.disable()
            profiler.dump_stats(out)

        loop.add_signal_handler(signal.SIGUSR1, start)
        loop.add_signal_handler(signal.SIGUSR2, stop)

    return _signals


if __name__ == "__main__":
    main()
