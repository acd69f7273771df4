"""Which upstream transport the proxy really uses for each provider (run by bench/run.py).

``python bench/probe.py`` (cwd: the project root, ``CCPROXY_CONFIG`` set) imports ``app``
exactly as ``sanic app.app`` does, runs the project's own ``before_server_start``
listeners (the ones that open the per-worker upstream clients), and prints one JSON
line: ``{"ok": true, "plugins": [...], "transports": {provider: class name}}``.
A config the app rejects exits with status 2 and the app's one-line message on stderr.
Nothing here is required: whatever it cannot find is reported as ``"unknown"``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys

sys.path.insert(0, os.getcwd())


def _transport_name(client: object) -> str:
    transport = getattr(client, "_transport", client)
    cls = type(transport)
    return f"{cls.__module__}.{cls.__qualname__}"


async def _open(app: object) -> dict[str, str]:
    listeners = []
    for item in getattr(app, "_future_listeners", []) or []:
        event = str(getattr(item, "event", ""))
        func = getattr(item, "listener", None)
        if func is None or "before_server_start" not in event and "server.init.before" not in event:
            continue
        module = getattr(func, "__module__", "") or ""
        if module.startswith(("ccproxy_core", "ccproxy_plugins", "app")):
            listeners.append(func)
    for func in listeners:
        result = func(app) if len(inspect.signature(func).parameters) == 1 else func(app, asyncio.get_running_loop())
        if inspect.isawaitable(result):
            await result
    clients = getattr(getattr(app, "ctx", None), "clients", None) or {}
    names = {name: _transport_name(client) for name, client in clients.items()}
    for client in clients.values():
        close = getattr(client, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:
                pass
    return names


def main() -> None:
    import app as module  # exits with status 2 on a configuration error

    app = module.app
    out: dict[str, object] = {"ok": True}
    try:
        info = app.ctx.plugins.info
        out["plugins"] = sorted(name for name, i in info.items() if getattr(i, "enabled", True))
    except Exception:
        out["plugins"] = "unknown"
    try:
        out["transports"] = asyncio.run(_open(app))
    except Exception as exc:  # internals changed: the benchmark still runs
        out["transports"] = {}
        out["error"] = repr(exc)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
