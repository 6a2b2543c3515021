"""`make lab` starts anywhere (issue 24): as root, on 127.0.0.1, on the chapters, URL printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lab  # noqa: E402

pytest.importorskip("jupyterlab")


def test_command_allows_root_binds_loopback_and_opens_the_chapters():
    cmd, url = lab.lab_command(8899, token="abc", root=True)
    assert "--allow-root" in cmd and "--ServerApp.ip=127.0.0.1" in cmd and "--no-browser" in cmd
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in cmd
    assert url == "http://127.0.0.1:8899/lab?token=abc"
    assert "--allow-root" not in lab.lab_command(8899, root=False)[0]


def test_make_lab_serves_the_chapter_list(tmp_path):
    port = lab.free_port()
    env = {**__import__("os").environ, "LAB_PORT": str(port), "JUPYTER_RUNTIME_DIR": str(tmp_path),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "lab.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert "open http://127.0.0.1:" in first, first
        url = first.split("open ", 1)[1].strip()
        token = url.split("token=")[1]
        api = f"http://127.0.0.1:{port}/api/contents?token={token}"
        deadline, listing = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(api, timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, f"the server did not answer (exit code {proc.poll()})"
        names = {item["name"] for item in listing["content"]}
        assert "01_forward_process.ipynb" in names and "04_train_msbdn_dense_haze.ipynb" in names
        with urllib.request.urlopen(url, timeout=10) as r:  # the URL printed opens JupyterLab
            assert r.status == 200 and "JupyterLab" in r.read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
