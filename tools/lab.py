"""Start JupyterLab on the chapters, anywhere: as root (Docker, cloud notebooks), on 127.0.0.1.

    python tools/lab.py                   # what `make lab` runs; prints the URL to open
    LAB_PORT=9000 LAB_IP=0.0.0.0 python tools/lab.py   # another port; all interfaces (mind the token)

JupyterLab refuses to start as root unless told ``--allow-root``; this script adds it when the
effective user id is 0. It binds 127.0.0.1 unless ``LAB_IP`` says otherwise, opens on the
``notebooks/`` folder, sets a fresh random token and prints the full URL (with that token)
before the server's own log, so the address is the first thing a reader sees.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for tests and parallel servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_command(port: int, ip: str = "127.0.0.1", token: str | None = None,
                root: bool | None = None, browser: bool = False,
                folder: Path = ROOT / "notebooks") -> tuple[list[str], str]:
    """The ``jupyter lab`` command line serving ``folder`` and the URL it will serve."""
    token = token or secrets.token_hex(16)
    root = (hasattr(os, "geteuid") and os.geteuid() == 0) if root is None else root
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={folder}",
           f"--IdentityProvider.token={token}"]
    if not browser:
        cmd.append("--no-browser")
    if root:
        cmd.append("--allow-root")
    host = "127.0.0.1" if ip in ("0.0.0.0", "") else ip
    return cmd, f"http://{host}:{port}/lab?token={token}"


def main() -> int:
    port = int(os.environ.get("LAB_PORT", "8888"))
    cmd, url = lab_command(port, os.environ.get("LAB_IP", "127.0.0.1"),
                           browser=os.environ.get("LAB_BROWSER") == "1")
    print(f"JupyterLab on the chapters: open {url}", flush=True)
    os.execv(cmd[0], cmd)  # the server replaces this process: Ctrl-C stops it as usual
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
