# Calibration: the proxy routes answer a canned JSON body at once (no parsing, no upstream):
# Sanic + the route + the request context, i.e. the framework floor on this machine.
from sanic import response
from ccproxy_core import proxy
_BODY = b'{"id":"msg_bench_0123456789abcdef","type":"message","role":"assistant","content":[{"type":"text","text":"Hello from the benchmark upstream."}],"stop_reason":"end_turn","usage":{"input_tokens":42,"output_tokens":12}}'
async def handle(self, request, ctx):
    return response.raw(_BODY, content_type="application/json", headers={"request-id": "req_bench", "x-request-id": ctx.request_id})
proxy.Proxy.handle = handle
