# Measurement (bench/latency_split.py): record (time.monotonic_ns, thread CPU ns, the object's id) when the
# proxy's protocol (intake.DeadlineProtocol) receives request bytes ("client_in"), when an upstream
# connection is written ("upstream_out"), when it receives bytes ("upstream_in") and when the relay writes
# to the client ("client_out"); written to $CCPROXY_STAMPS at exit. The id is the client connection's, the
# upstream connection's or the relay's (one per response). Changes nothing else.
import atexit
import os
import time

from ccproxy_core import intake, relay
from ccproxy_core.transport import connection

_STAMPS: list = []
_now, _cpu = time.monotonic_ns, time.thread_time_ns


def _stamped(func, kind):
    if func.__code__.co_flags & 0x80:  # a coroutine function

        async def wrapper(self, *args, **kwargs):
            _STAMPS.append((kind, _now(), _cpu(), id(self)))
            return await func(self, *args, **kwargs)
    else:

        def wrapper(self, *args, **kwargs):
            _STAMPS.append((kind, _now(), _cpu(), id(self)))
            return func(self, *args, **kwargs)
    return wrapper


for cls, name, kind in ((intake.DeadlineProtocol, "data_received", "client_in"),
                        (connection._Connection, "begin", "upstream_out"),
                        (connection._Connection, "data_received", "upstream_in"),
                        (relay.Relay, "_write", "client_out")):
    assert name in vars(cls), f"{cls.__name__}.{name} is gone: re-check this patch"
    setattr(cls, name, _stamped(vars(cls)[name], kind))


@atexit.register
def _dump() -> None:
    with open(os.environ["CCPROXY_STAMPS"], "w") as fh:
        fh.writelines(f"{kind} {at} {cpu} {key}\n" for kind, at, cpu, key in _STAMPS)
