"""The service: ``sanic app.app`` (config from ``$CCPROXY_CONFIG``, default ``config.yaml``).

The first-party plugins live in ``plugins/`` beside this file and are imported as
``ccproxy_plugins``, the name the wheel installs them under (docs/architecture.md). In a checkout
that was never pip-installed nothing provides that name, so this file binds it to its own
``plugins/`` folder.
"""

import importlib.util
import sys
from pathlib import Path


def _bind_checkout_plugins() -> None:
    if importlib.util.find_spec("ccproxy_plugins") is not None:  # installed (or already bound)
        return
    folder = Path(__file__).resolve().parent / "plugins"
    spec = importlib.util.spec_from_file_location(
        "ccproxy_plugins", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ccproxy_plugins"] = module
    spec.loader.exec_module(module)


_bind_checkout_plugins()

from ccproxy_core import ConfigError, create_app  # noqa: E402

try:
    app = create_app()
except ConfigError as exc:
    # One readable line, no traceback: the operator fixes the file and starts again.
    print(f"ccproxy: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
