# Experiment: after the head went out, write each chunk frame straight to the socket
# (Sanic's response.send -> Http.send -> http1_response_chunked -> protocol.send -> Event.wait
# chain skipped while the transport is writable). Measures the cost of Sanic's per-chunk path.
import inspect, textwrap
from ccproxy_core import relay
from sanic.exceptions import RequestCancelled

async def _sanic_send(response, data):
    http = response.stream
    protocol = getattr(http, "protocol", None)
    if (protocol is not None and data and http.response_func == http.http1_response_chunked
            and protocol._can_write.is_set()):
        transport = protocol.transport
        if transport.is_closing():
            raise RequestCancelled
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return
    await response.send(data)

src = textwrap.dedent(inspect.getsource(relay.Relay._write))
old = "await response.send(data)"
assert src.count(old) == 1, "write changed"
src = src.replace(old, "await (response.send(data) if first else _sanic_send(response, data))")
src = src.replace("    if ctx.t_first_byte is None:\n        ctx.t_first_byte = ctx.elapsed()",
                  "    first = ctx.t_first_byte is None\n    if first:\n        ctx.t_first_byte = ctx.elapsed()")
assert "first = ctx.t_first_byte is None" in src, src
ns = {}
g = dict(relay.__dict__); g["_sanic_send"] = _sanic_send
exec(compile(src, "<write-patch>", "exec"), g, ns)
relay.Relay._write = ns["_write"]
