# Experiment: in upstream.send, build the upstream httpx.Request without re-parsing the
# URL and without httpx's content encoding (encode_request/_prepare): the parsed httpx.URL is cached
# per URL string; Host (first) and Content-Length are added here as httpx would add them; the body
# goes in as a ByteStream. Non-ASCII header values still raise UnicodeEncodeError as before.
import inspect
import re
import textwrap

import httpx
from httpx._content import ByteStream

from ccproxy_core import attempts, upstream

_URLS: dict = {}


def _cheap_request(attempt, limits):
    url = _URLS.get(attempt.url)
    if url is None:
        if len(_URLS) > 1024:
            _URLS.clear()
        url = _URLS[attempt.url] = httpx.URL(attempt.url)
    headers = [("host", url.netloc.decode("ascii"))]
    headers += attempt.headers.items()
    headers.append(("content-length", str(len(attempt.body))))
    return httpx.Request(attempt.method, url, headers=headers, stream=ByteStream(attempt.body),
                         extensions={"timeout": limits})


src = textwrap.dedent(inspect.getsource(upstream.send))
pattern = re.compile(
    r"request = httpx\.Request\(\s*attempt\.method,\s*attempt\.url,\s*headers=attempt\.headers,\s*"
    r"content=attempt\.body,\s*extensions=\{\"timeout\": limits\},?\s*\)"
)
src, n = pattern.subn("request = _cheap_request(attempt, limits)", src, count=1)
assert n == 1, "upstream.send changed: update bench/experiments/cheap_request.py"
namespace: dict = {}
exec(compile(src, "<cheap_request>", "exec"), {**upstream.__dict__, "_cheap_request": _cheap_request}, namespace)
upstream.send = namespace["send"]
attempts.send = namespace["send"]  # the scheduler imported it by name
