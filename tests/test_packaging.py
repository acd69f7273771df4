"""The package as others meet it: its public API, the wheel it builds, the ways to start it.

* plugins (first-party ones, the example package, the docs' examples) import only what
  ``ccproxy_core.__all__`` lists, and nothing imports the folder ``plugins/`` by that name;
* ``import ccproxy_core`` loads neither Sanic nor httpx;
* the wheel holds only ``ccproxy_core`` and ``ccproxy_plugins``, and its entry points resolve in it;
* a checkout that was never pip-installed imports its plugins as ``ccproxy_plugins`` (app.py);
* ``sanic MODULE:create_app --factory`` serves, for ``ccproxy_core`` and for a user's own module.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

import ccproxy_core
from ccproxy_core.plugins import DEFAULT_PLUGINS
from tests.servers import DISTRIBUTION, ROOT, only_first_party_plugins, provider_config
from tests.test_hook_docs import code_blocks

PLUGIN_SOURCES = sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])
DOCS = [ROOT / "docs" / "plugins.md", ROOT / "docs" / "configuration.md", ROOT / "README.md",
        ROOT / "examples" / "ccproxy-example-plugin" / "README.md"]


def _python_sources() -> list[tuple[str, str]]:
    """(where, source) of every plugin module and every python block of the docs for plugin and app authors."""
    out = [(str(path.relative_to(ROOT)), path.read_text()) for path in PLUGIN_SOURCES]
    for doc in DOCS:
        for i, (info, body) in enumerate(code_blocks(doc.read_text())):
            if info.startswith("python"):
                out.append((f"{doc.relative_to(ROOT)} block {i}", body))
    return out


def _imports(source: str) -> list[tuple[str, list[str]]]:
    """(module, names) for every absolute import in ``source`` (names empty for ``import x``).

    A docs block that is not a whole module (a hook's signature line) counts by its import lines.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = ast.parse("\n".join(line for line in source.splitlines() if line.startswith(("from ", "import "))))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module or "", [alias.name for alias in node.names]))
    return found


def test_plugins_examples_and_docs_import_only_the_public_api():
    """``ccproxy_core``'s submodules are internal: a plugin that imports one breaks when they move."""
    public = set(ccproxy_core.__all__)
    deep, unknown = [], []
    for where, source in _python_sources():
        for module, names in _imports(source):
            if module.startswith("ccproxy_core."):
                deep.append(f"{where}: {module}")
            elif module == "ccproxy_core":
                unknown += [f"{where}: {name}" for name in names if name not in public]
    assert not deep, f"import these from ccproxy_core (add them to its __all__ if missing): {deep}"
    assert not unknown, f"not in ccproxy_core.__all__: {unknown}"


def test_nothing_imports_the_plugins_folder_by_its_folder_name():
    """Installed, the folder is ``ccproxy_plugins``; a ``plugins.x`` import would load a second copy."""
    wrong = []
    for path in sorted(ROOT.glob("*.py")) + sorted(
        p for top in ("plugins", "examples", "tests", "bench") for p in (ROOT / top).rglob("*.py")
    ):
        for module, _ in _imports(path.read_text()):
            if module == "plugins" or module.startswith("plugins."):
                wrong.append(f"{path.relative_to(ROOT)}: {module}")
    assert not wrong, wrong


def test_every_public_name_resolves_and_the_import_stays_cheap():
    for name in ccproxy_core.__all__:
        assert getattr(ccproxy_core, name) is not None, name
    assert ccproxy_core.ResponseAdapter.__module__.startswith("ccproxy_core.")
    out = subprocess.run(
        [sys.executable, "-c", "import sys, ccproxy_core; print([m for m in ('sanic', 'httpx') if m in sys.modules])"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert out.strip() == "[]"


def test_wheel_holds_only_collision_free_top_level_packages(tmp_path):
    """``pip wheel .``: the folder plugins/ ships as ``ccproxy_plugins``, and nothing else is top level."""
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "bench",
                                                                 "tests", "docs", "examples"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(DISTRIBUTION.replace("-", "_") + "-")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert top == {"ccproxy_core", "ccproxy_plugins"}, top
    # Every source file ships (a package missing from pyproject's list would leave an editable
    # install working and the wheel broken).
    shipped = {
        *(f"ccproxy_core/{p.relative_to(ROOT / 'ccproxy_core')}" for p in (ROOT / "ccproxy_core").rglob("*.py")),
        *(f"ccproxy_plugins/{p.relative_to(ROOT / 'plugins')}" for p in (ROOT / "plugins").rglob("*")
          if p.is_file() and "__pycache__" not in p.parts),
    }
    assert shipped - set(names) == set() and "ccproxy_core/py.typed" in names
    info = next(name.split("/", 1)[0] for name in names if name.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert f"\nName: {DISTRIBUTION}\n" in metadata
    # The first-party plugins are registered from code (DEFAULT_PLUGINS): each names a module the
    # wheel holds, and none is also an entry point (it would be registered twice).
    for module in DEFAULT_PLUGINS:
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    assert f"{info}/entry_points.txt" not in names


def _site_without_this_project(tmp_path: Path) -> Path:
    """The venv's site-packages less this project's install (dist-info and editable finder), as symlinks."""
    (packages,) = {p.resolve() for p in map(Path, site.getsitepackages()) if p.is_dir()}
    farm = tmp_path / "site"
    farm.mkdir()
    for entry in packages.iterdir():
        if not entry.name.startswith(("ccproxy_core", "__editable__")):
            (farm / entry.name).symlink_to(entry)
    return farm


def test_a_checkout_never_pip_installed_imports_its_plugins_as_ccproxy_plugins(tmp_path, mock):
    """app.py binds ``ccproxy_plugins`` to the plugins/ folder beside it when nothing installed provides it."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("ccproxy_core", "plugins"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "app.py", checkout)
    config = provider_config(mock.url)
    (checkout / "config.yaml").write_text(yaml.safe_dump(config))
    probe = (
        "import json, sys, app, ccproxy_core, ccproxy_plugins.translate\n"
        "print(json.dumps({'core': ccproxy_core.__file__, 'plugins': ccproxy_plugins.translate.__file__,\n"
        "                  'folder_name_imported': 'plugins' in sys.modules}))\n"
    )
    result = subprocess.run(  # -S: no site-packages and no .pth files (so no editable install) ...
        [sys.executable, "-S", "-c", probe],
        cwd=checkout, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(_site_without_this_project(tmp_path))},  # ... only the dependencies
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["core"] == str(checkout / "ccproxy_core" / "__init__.py")
    assert found["plugins"] == str(checkout / "plugins" / "translate" / "__init__.py")
    assert found["folder_name_imported"] is False


USER_MODULE = '''
"""A user's own start-up module: the config path and an extra plugin in code."""
import ccproxy_core


class Stamp:
    @ccproxy_core.hookimpl
    def ccproxy_upstream_headers(self, headers):
        headers["x-built-by"] = "myproxy"


def create_app():
    return ccproxy_core.create_app({config!r}, plugins=[("stamp", Stamp())])
'''


@pytest.mark.parametrize("target", ["ccproxy_core:create_app", "myproxy:create_app"])
def test_sanic_factory_serves_on_a_real_socket(target, tmp_path, mock, sanic_port):
    """``sanic MODULE:create_app --factory``, as docs/configuration.md shows it, streams a response."""
    path = tmp_path / "ccproxy.yaml"
    path.write_text(yaml.safe_dump(only_first_party_plugins(provider_config(mock.url))))
    (tmp_path / "myproxy.py").write_text(USER_MODULE.format(config=str(path)))
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("sanic")), target, "--factory",
         "--host", "127.0.0.1", "--port", str(sanic_port), "--single-process"],
        cwd=tmp_path, env={**os.environ, "CCPROXY_CONFIG": str(path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{sanic_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", url + "/v1/messages", json=body, timeout=10) as r:
            events = [line for line in r.iter_lines() if line.startswith("event: ")]
        assert r.status_code == 200 and events[0] == "event: message_start" and events[-1] == "event: message_stop"
        assert r.headers.get("x-built-by") == ("myproxy" if target.startswith("myproxy") else None)
    finally:
        proc.terminate()
        proc.wait(30)
