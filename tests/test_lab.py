"""`make lab` starts anywhere (issue 24): as root, on 127.0.0.1, on the chapters, URL printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lab  # noqa: E402

pytest.importorskip("jupyterlab")


def _token_file(cmd: list[str]) -> Path:
    assert cmd[2] == lab.SERVE, cmd
    return Path(cmd[3])


def test_command_allows_root_binds_loopback_and_opens_the_chapters():
    token = "3f9c0a7d1e2b4c5a8d6e7f901a2b3c4d"
    cmd, url = lab.lab_command(8899, token=token, root=True)
    token_file = _token_file(cmd)
    try:
        assert "--allow-root" in cmd and "--ServerApp.ip=127.0.0.1" in cmd and "--no-browser" in cmd
        assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in cmd
        assert url == f"http://127.0.0.1:8899/lab?token={token}"
        # The token is not on the command line (any local user reads that with `ps`) but in a
        # file only its owner can read.
        assert token not in " ".join(cmd) and not any("token=" in a.lower() for a in cmd)
        assert token_file.read_text() == token
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.parent.stat().st_mode & 0o777 == 0o700
    finally:
        token_file.unlink()
        token_file.parent.rmdir()
    assert "--allow-root" not in lab.server_args(8899, root=False)
    assert not any("token" in a.lower() for a in lab.server_args(8899, root=True))
    assert lab.token_env(token, {"PATH": "/bin", "JUPYTER_TOKEN_FILE": "/x"}) == {
        "PATH": "/bin", "JUPYTER_TOKEN": token}


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _wait_for_api(proc: subprocess.Popen, port: int, token: str) -> dict:
    api = f"http://127.0.0.1:{port}/api/contents?token={token}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(api, timeout=5) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server did not answer (exit code {proc.poll()})")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_make_lab_serves_the_chapter_list(tmp_path):
    port = lab.free_port()
    env = {**__import__("os").environ, "LAB_PORT": str(port), "JUPYTER_RUNTIME_DIR": str(tmp_path),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    env.pop("JUPYTER_TOKEN", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "lab.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert "open http://127.0.0.1:" in first, first
        url = first.split("open ", 1)[1].strip()
        token = url.split("token=")[1]
        listing = _wait_for_api(proc, port, token)
        names = {item["name"] for item in listing["content"]}
        assert "01_forward_process.ipynb" in names and "04_train_msbdn_dense_haze.ipynb" in names
        with urllib.request.urlopen(url, timeout=10) as r:  # the URL printed opens JupyterLab
            assert r.status == 200 and "JupyterLab" in r.read().decode()
        # The running server (lab.py exec'd into it: same pid) has no token on its command line.
        cmdline = _cmdline(proc.pid)
        if cmdline is not None:
            assert "jupyterlab" in cmdline and token not in cmdline, cmdline
        with pytest.raises(urllib.error.HTTPError):  # and the token is really needed
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=10)
    finally:
        _stop(proc)


def test_lab_command_passes_the_token_through_a_file_it_deletes(tmp_path):
    """What the browser tests (tests/ui) start: the same server, the token off the command line."""
    port = lab.free_port()
    token = "5b1e8c2f9a3d4e6f7a8b9c0d1e2f3a4b"
    cmd, url = lab.lab_command(port, token=token)
    cmd.append("--LabApp.expose_app_in_browser=True")  # options appended reach jupyter lab
    token_file = _token_file(cmd)
    env = {**__import__("os").environ, "JUPYTER_RUNTIME_DIR": str(tmp_path),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    env.pop("JUPYTER_TOKEN", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert token not in " ".join(cmd)
        _wait_for_api(proc, port, token)
        assert not token_file.exists() and not token_file.parent.exists()
        cmdline = _cmdline(proc.pid)
        if cmdline is not None:
            assert "jupyterlab" in cmdline and token not in cmdline, cmdline
            assert "--LabApp.expose_app_in_browser=True" in cmdline
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
    finally:
        _stop(proc)
        if token_file.exists():
            token_file.unlink()
