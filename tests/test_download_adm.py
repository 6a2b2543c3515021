"""data_scripts/download_adm_prior.py against a local HTTP server (no internet needed).

The served "checkpoint" is the small ADM fixture's state dict, so the conversion step runs too.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "download_adm_prior", ROOT / "data_scripts" / "download_adm_prior.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dl = _load_script()


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` with ``Range: bytes=N-`` support; can drop one transfer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        payload = srv.payload
        rng = self.headers.get("Range")
        srv.requests.append(rng)
        start = 0
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if srv.cut_after is not None:  # announce everything, send a part, hang up
            n, srv.cut_after = srv.cut_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # the client hanging up early (size mismatch tests) breaks the pipe: expected
        pass


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "adm_small_reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def payload(ref) -> bytes:
    buf = io.BytesIO()
    torch.save(ref["state_dict"], buf)
    return buf.getvalue()


@pytest.fixture
def server(payload, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _QuietServer(("127.0.0.1", 0), _RangeHandler)
    srv.payload, srv.requests, srv.cut_after, srv.honour_range = payload, [], None, True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/256x256_diffusion_uncond.pt"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_plain_download(server, payload, tmp_path):
    out = dl.download(server.url, tmp_path / "m.pt", expected_size=len(payload), progress=False)
    assert out.read_bytes() == payload
    assert not (tmp_path / "m.pt.part").exists()
    assert server.requests == [None]
    # a complete file is not fetched again
    dl.download(server.url, out, expected_size=len(payload), progress=False)
    assert server.requests == [None]


def test_interrupted_transfer_resumes(server, payload, tmp_path):
    server.cut_after = len(payload) // 3
    out = dl.download(server.url, tmp_path / "m.pt", progress=False, backoff=0.0)
    assert out.read_bytes() == payload
    assert server.requests[0] is None
    assert server.requests[1] == f"bytes={len(payload) // 3}-"  # resumed, not restarted


def test_existing_part_file_is_resumed(server, payload, tmp_path):
    part = tmp_path / "m.pt.part"
    part.write_bytes(payload[:1000])
    out = dl.download(server.url, tmp_path / "m.pt", progress=False)
    assert out.read_bytes() == payload
    assert server.requests == ["bytes=1000-"]


def test_complete_part_file_is_finished(server, payload, tmp_path):
    (tmp_path / "m.pt.part").write_bytes(payload)
    out = dl.download(server.url, tmp_path / "m.pt", progress=False)
    assert out.read_bytes() == payload  # 416 "range not satisfiable" = already complete


def test_server_without_range_support_restarts(server, payload, tmp_path):
    server.honour_range = False
    (tmp_path / "m.pt.part").write_bytes(b"stale bytes")
    out = dl.download(server.url, tmp_path / "m.pt", progress=False)
    assert out.read_bytes() == payload


def test_size_mismatch_fails_clearly(server, payload, tmp_path):
    with pytest.raises(dl.DownloadError, match="size mismatch") as info:
        dl.download(server.url, tmp_path / "m.pt", expected_size=len(payload) + 1, progress=False)
    assert f"{len(payload):,}" in str(info.value)
    assert not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "m.pt.part").exists()
    with pytest.raises(dl.DownloadError, match="smaller than"):
        dl.download(server.url, tmp_path / "m.pt", min_size=dl.MIN_BYTES_256_UNCOND, progress=False)


def test_sha256_mismatch_keeps_no_final_file(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.download(server.url, tmp_path / "m.pt", sha256="0" * 64, progress=False)
    assert not (tmp_path / "m.pt").exists()


def _flags_file(tmp_path, ref) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(ref["config"]))
    return path


def test_main_downloads_and_converts(server, ref, tmp_path, capsys):
    from diffusers import UNet2DModel

    server.cut_after = 4096
    out_dir = tmp_path / "adm-diffusers"
    argv = [
        "--url",
        server.url,
        "--out",
        str(tmp_path / "ckpt" / "adm.pt"),
        "--diffusers-dir",
        str(out_dir),
        "--flags",
        str(_flags_file(tmp_path, ref)),
        "--no-progress",
    ]
    # the retry after the hang-up waits backoff=1 s by default; fine for one test
    assert dl.main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "ckpt" / "adm.pt").is_file()
    assert (out_dir / "scheduler_config.json").is_file()
    unet = UNet2DModel.from_pretrained(out_dir)
    with torch.no_grad():
        out = unet(ref["x"], ref["t"]).sample
    err = ((out - ref["output"]).abs().max() / ref["output"].abs().max()).item()
    assert err <= 1e-5


def test_main_from_file_checks_size(ref, tmp_path, capsys):
    ckpt = tmp_path / "manual.pt"
    torch.save(ref["state_dict"], ckpt)
    argv = ["--from-file", str(ckpt), "--diffusers-dir", str(tmp_path / "d"), "--no-progress"]
    # default flags = the paper's 2.2 GB prior: a 9 MB file is rejected before converting
    assert dl.main(argv) == 1
    assert "size mismatch" in capsys.readouterr().err
    argv += ["--flags", str(_flags_file(tmp_path, ref))]
    assert dl.main(argv) == 0
    assert (tmp_path / "d" / "config.json").is_file()
