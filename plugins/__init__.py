"""First-party plugins: each module is registered through the ``ccproxy`` entry points."""
