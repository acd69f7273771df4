# Experiment: a request with one route prepares its attempt directly instead of through the
# `Proxy._attempts` async generator. The Scheduler never resumes that generator after the first
# attempt answers, so it is left suspended; when the request's objects are freed, the loop's
# async-generator finalizer closes it with `call_soon_threadsafe(create_task, agen.aclose())`:
# an eventfd write, an extra epoll wake-up and a task on every request (strace shows the
# `write(<eventfd>)` right after the client's response).
import inspect

from ccproxy_core import proxy

_SOURCE = inspect.getsource(proxy.Proxy.handle)
assert "attempts = self._attempts(request, ctx, routes)" in _SOURCE, "Proxy.handle changed: re-check this patch"


async def handle(self, request, ctx):
    routes = await self._receive(request, ctx)
    ctx.stream = ctx.body.get("stream") is True and not ctx.counting
    if len(routes) == 1:  # `_attempts` with one route: the same error raised, no generator left suspended
        return self.handler.respond(ctx, await self._prepare(request, ctx, routes[0]), None)
    attempts = self._attempts(request, ctx, routes)
    first = await anext(attempts)
    return self.handler.respond(ctx, first, attempts)


proxy.Proxy.handle = handle
