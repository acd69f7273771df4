# Measurement only (not a proposal as is): finish without asyncio.shield's extra Task per request.
import inspect, textwrap
from ccproxy_core import streaming
src = textwrap.dedent(inspect.getsource(streaming.DeferredResponse.stream))
old = "await asyncio.shield(self._finish(upstream, attempt))"
assert src.count(old) == 1, "stream changed"
src = src.replace(old, "await self._finish(upstream, attempt)")
ns = {}
exec(compile(src, "<stream-patch>", "exec"), streaming.__dict__, ns)
streaming.DeferredResponse.stream = ns["stream"]
