# Experiment: in _relay, iterate the transport's byte stream directly instead of httpx's
# Response.aiter_raw() (an async generator + ByteChunker + request_context per chunk).
import inspect, textwrap
from ccproxy_core import relay
src = textwrap.dedent(inspect.getsource(relay.Relay._relay))
old = "upstream.aiter_bytes() if decode else upstream.aiter_raw()"
assert old in src, "relay changed"
src = src.replace(old, "upstream.aiter_bytes() if decode else upstream.stream")
ns = {}
exec(compile(src, "<relay-patch>", "exec"), relay.__dict__, ns)
relay.Relay._relay = ns["_relay"]
