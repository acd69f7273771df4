"""Real command-line tools from the npm registry, for tests that run them offline against the mock."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def npm_tool(package: str, command: str, cache: Path, timeout: float) -> Path:
    """The ``command`` executable of npm ``package`` (``name@version``), installed once into ``cache``
    (never globally); the calling test is skipped, with the reason, when npm cannot fetch it."""
    binary = cache / "node_modules" / ".bin" / command
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot fetch {package}")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--no-save", package],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {package} took over {timeout:g}s")
    if done.returncode != 0 or not binary.exists():
        pytest.skip(f"npm install {package} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return binary
