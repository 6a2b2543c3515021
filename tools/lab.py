"""Start JupyterLab on the chapters, anywhere: as root (Docker, cloud notebooks), on 127.0.0.1.

    python tools/lab.py                   # what `make lab` runs; prints the URL to open
    LAB_PORT=9000 LAB_IP=0.0.0.0 python tools/lab.py   # another port; all interfaces (mind the token)

JupyterLab refuses to start as root unless told ``--allow-root``; this script adds it when the
effective user id is 0. It binds 127.0.0.1 unless ``LAB_IP`` says otherwise, opens on the
``notebooks/`` folder, sets a fresh random token and prints the full URL (with that token)
before the server's own log, so the address is the first thing a reader sees.

The token never appears on a command line, where any local user could read it (``ps``): the
server gets it in its environment (``JUPYTER_TOKEN``, which jupyter_server reads; a process's
environment is readable by its owner and root only). :func:`lab_command`, for callers that
start the server themselves, hands it over in a private file (mode 0600, in a 0700 folder) that
the command deletes as it starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
#: The first argument of the command :func:`lab_command` returns: serve with a token file.
SERVE = "--serve-with-token-file"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for tests and parallel servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_args(port: int, ip: str = "127.0.0.1", root: bool | None = None, browser: bool = False,
                folder: Path = ROOT / "notebooks") -> list[str]:
    """The ``jupyter lab`` options serving ``folder``; no token among them (see :func:`token_env`)."""
    root = (hasattr(os, "geteuid") and os.geteuid() == 0) if root is None else root
    args = [f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={folder}"]
    if not browser:
        args.append("--no-browser")
    if root:
        args.append("--allow-root")
    return args


def lab_url(port: int, ip: str, token: str) -> str:
    host = "127.0.0.1" if ip in ("0.0.0.0", "") else ip
    return f"http://{host}:{port}/lab?token={token}"


def token_env(token: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with ``JUPYTER_TOKEN`` set to ``token``."""
    env = dict(os.environ if base is None else base)
    env.pop("JUPYTER_TOKEN_FILE", None)
    env["JUPYTER_TOKEN"] = token
    return env


def write_token_file(token: str) -> Path:
    """``token`` in a new file only its owner can read (0600, in a fresh 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="diffloss-lab-"))
    path = folder / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def lab_command(port: int, ip: str = "127.0.0.1", token: str | None = None,
                root: bool | None = None, browser: bool = False,
                folder: Path = ROOT / "notebooks") -> tuple[list[str], str]:
    """A command that starts JupyterLab serving ``folder``, and the URL it will serve.

    The token is not on the command line: the command reads it from a private file
    (:func:`write_token_file`), deletes that file and starts the server with the token in its
    environment. Options appended to the command go to ``jupyter lab``."""
    token = token or secrets.token_hex(16)
    cmd = [sys.executable, str(THIS), SERVE, str(write_token_file(token)),
           *server_args(port, ip, root, browser, folder)]
    return cmd, lab_url(port, ip, token)


def _exec_lab(args: Sequence[str], token: str) -> None:
    """Replace this process with the server (Ctrl-C stops it as usual), the token in its env."""
    cmd = [sys.executable, "-m", "jupyterlab", *args]
    os.execve(cmd[0], cmd, token_env(token))


def serve_with_token_file(token_file: Path, args: Sequence[str]) -> int:
    """Read and delete ``token_file`` (and its folder, if :func:`write_token_file` made it and it is empty),
    then start the server with ``args``."""
    token = token_file.read_text().strip()
    token_file.unlink()
    if token_file.parent.name.startswith("diffloss-lab-"):
        with contextlib.suppress(OSError):
            token_file.parent.rmdir()  # only if empty
    if not token:
        print(f"error: the token file {token_file} was empty", file=sys.stderr)
        return 1
    _exec_lab(args, token)
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SERVE] and len(argv) >= 2:
        return serve_with_token_file(Path(argv[1]), argv[2:])
    port = int(os.environ.get("LAB_PORT", "8888"))
    ip = os.environ.get("LAB_IP", "127.0.0.1")
    token = secrets.token_hex(16)
    args = server_args(port, ip, browser=os.environ.get("LAB_BROWSER") == "1")
    print(f"JupyterLab on the chapters: open {lab_url(port, ip, token)}", flush=True)
    _exec_lab(args, token)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
