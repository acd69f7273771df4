"""The service: ``sanic app.app`` (config from ``$CCPROXY_CONFIG``, default ``config.yaml``)."""

import sys

from ccproxy_core import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    # One readable line, no traceback: the operator fixes the file and starts again.
    print(f"ccproxy: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
