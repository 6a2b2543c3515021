"""Browser tests of the chapters (issue 24): JupyterLab in a real headless Chromium.

They need the system Chromium (Debian: ``apt-get install chromium``) and the ``playwright``
Python package (``pip install playwright``; its own browser download is not used). Without
them the tests are skipped with one line saying what to install, except where
``DIFFLOSS_UI_REQUIRED=1`` (CI's ``.ci/run``), where a skip is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DIFFLOSS_CHROMIUM", "/usr/bin/chromium")
#: Screenshots of every chapter, kept with the other ci outputs (git-ignored).
SHOTS = Path(os.environ.get("DIFFLOSS_UI_SCREENSHOTS", ROOT / "figures" / "ci" / "ui"))


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install playwright"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: apt-get install chromium (or set DIFFLOSS_CHROMIUM)"
    return None


@pytest.hookimpl(trylast=True)  # after -k/-m: only the browser tests that will run count
def pytest_collection_modifyitems(config, items):
    why = _missing()
    if why is None:
        leave_to_the_browser(config, items)
        return
    if os.environ.get("DIFFLOSS_UI_REQUIRED") == "1":
        raise pytest.UsageError(f"browser tests required (DIFFLOSS_UI_REQUIRED=1), but {why}")
    skip = pytest.mark.skip(reason=f"browser tests skipped: {why}")
    for item in items:
        if "tests/ui" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def leave_to_the_browser(config, items) -> None:
    """Chapters that a browser test runs are not executed a second time by nbval: the browser
    test makes nbval's check on its own execution (tests/ui/nbcheck.py). Without the browser
    (the tests skipped) nbval runs every chapter as before."""
    in_browser = {item.callspec.params["name"] for item in items
                  if getattr(item, "originalname", "") == "test_chapter_runs_renders_and_its_widget_works"}
    twice = [item for item in items
             if item.path.suffix == ".ipynb" and item.path.parent.name == "notebooks"
             and item.path.name in in_browser]
    if twice:
        config.hook.pytest_deselected(items=twice)
        items[:] = [item for item in items if item not in twice]


class Lab:
    """A JupyterLab server on a folder, on 127.0.0.1 with a random port and token."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        sys.path.insert(0, str(ROOT / "tools"))
        import lab

        self.port = lab.free_port()
        self.token = secrets.token_hex(16)
        cmd, _ = lab.lab_command(self.port, token=self.token, folder=folder)
        cmd.append("--LabApp.expose_app_in_browser=True")
        self.proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}") from None
                time.sleep(0.3)
        raise RuntimeError("JupyterLab did not start within 90 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cleared_copy(notebooks: list[Path], folder: Path) -> None:
    """Copies of the chapters without their stored outputs: what renders comes from this run."""
    folder.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        data = json.loads(nb.read_text())
        for cell in data["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        (folder / nb.name).write_text(json.dumps(data))


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chapters")
    cleared_copy(sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), folder)
    shutil.copy(ROOT / "tests" / "ui" / "broken_widget.json", folder / "broken_widget.ipynb")
    env = {**os.environ, "DIFFLOSS_PROFILE": "ci", "HF_HUB_OFFLINE": "1",
           "JUPYTER_RUNTIME_DIR": str(folder / ".runtime"),
           "JUPYTER_CONFIG_DIR": str(folder / ".config")}
    server = Lab(folder, env)
    yield server
    server.close()
