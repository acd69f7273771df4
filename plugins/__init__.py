"""First-party plugins, imported as ``ccproxy_plugins`` (the wheel maps this folder to that name; so
does app.py in a checkout); each module is registered through the ``ccproxy`` entry points."""
