"""data_scripts/: the Dense-Haze downloader against a local HTTP server, and the prepare scripts.

The server is a small ``http.server`` handler with ``Range`` support, on 127.0.0.1 at a random
port, serving a Dense-Haze-like zip (55 tiny PNG pairs) that the test builds. Nothing leaves
the machine.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from diffloss.data import PairedImageDataset

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"data_scripts_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dense = load_script("download_dense_haze")
lol = load_script("prepare_lol")
rain = load_script("prepare_rain")
common = load_script("_common")


def tiny_png(seed: int, h: int = 4, w: int = 5) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return encode_png(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)).numpy().tobytes()


def dense_haze_zip(skip: tuple[str, ...] = (), prefix: str = "Dense_Haze_NTIRE19/") -> bytes:
    """A zip shaped like the official archive: hazy/NN_hazy.png and GT/NN_GT.png, NN = 01..55."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(prefix + "readme.txt", "Dense-Haze, NTIRE 2019 (test fixture)\n")
        for i in range(1, 56):
            for kind, seed in (("hazy", i), ("GT", 100 + i)):
                name = f"{kind}/{i:02d}_{kind}.png"
                if name not in skip:
                    zf.writestr(prefix + name, tiny_png(seed))
        zf.writestr("__MACOSX/" + prefix + "hazy/._01_hazy.png", b"junk")
    return buf.getvalue()


def corrupt_member(data: bytes, member: str) -> bytes:
    """Flip one byte inside ``member``'s stored data (its CRC-32 no longer matches)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member))
    local = info.header_offset
    name_len = int.from_bytes(data[local + 26 : local + 28], "little")
    extra_len = int.from_bytes(data[local + 28 : local + 30], "little")
    pos = local + 30 + name_len + extra_len + info.compress_size // 2
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]


# ------------------------------------------------------------------------------------------
# local HTTP server with Range support
# ------------------------------------------------------------------------------------------


class FileServer:
    """Serves ``payload`` at any path. ``cut`` = bytes to send before dropping the connection,
    for each of the next ``cut_times`` responses; ``status`` forces an error status."""

    def __init__(self) -> None:
        self.payload = b""
        self.cut: int | None = None
        self.cut_times = 0
        self.status: int | None = None
        self.ignore_range = False
        self.content_type = "application/zip"
        self.requests: list[dict[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if server.status is not None:
                    body = b"<html>not found</html>"
                    self.send_response(server.status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data, start = server.payload, 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if server.ignore_range:
                    match = None
                if match and int(match.group(1)) >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"fixture-v1"')
                self.end_headers()
                if server.cut is not None and server.cut_times > 0:
                    server.cut_times -= 1
                    self.wfile.write(body[: server.cut])
                    self.wfile.flush()
                    self.close_connection = True  # drop the connection mid-body
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/Dense_Haze_NTIRE19.zip"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


def run_dense(root: Path, *extra: str) -> int:
    return dense.main(["--root", str(root), "--retry-wait", "0", "--no-progress", "--timeout", "10", *extra])


def assert_prepared(root: Path) -> None:
    dest = root / "dense_haze"
    assert sorted(p.name for p in (dest / "train" / "hazy").iterdir()) == [f"{i:02d}_hazy.png" for i in range(1, 51)]
    assert sorted(p.name for p in (dest / "test" / "GT").iterdir()) == [f"{i:02d}_GT.png" for i in range(51, 56)]
    assert (dest / "train" / "GT" / "07_GT.png").read_bytes() == tiny_png(107)
    assert (dest / "test" / "hazy" / "55_hazy.png").read_bytes() == tiny_png(55)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folders left


# ------------------------------------------------------------------------------------------
# download_dense_haze.py
# ------------------------------------------------------------------------------------------


def test_download_resumes_an_interrupted_transfer(tmp_path: Path, server: FileServer, capsys) -> None:
    server.payload = dense_haze_zip()
    server.cut, server.cut_times = len(server.payload) // 3, 1
    assert run_dense(tmp_path, "--url", server.url) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "resuming from byte" in out
    assert [r["range"] for r in server.requests] == [None, f"bytes={server.cut}-"]
    assert (tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip").read_bytes() == server.payload
    assert not (tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip.part").exists()
    assert_prepared(tmp_path)
    # The result is what the dataset reads: 50 train pairs, 5 test pairs.
    assert len(PairedImageDataset(tmp_path / "dense_haze", "dense_haze", "train")) == 50
    test = PairedImageDataset(tmp_path, "dense_haze", "test")  # the data folder works too
    assert test.names == ["51", "52", "53", "54", "55"]

    # Idempotent: a second run does nothing and says so (no request).
    assert run_dense(tmp_path, "--url", server.url) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(server.requests) == 2


def test_partial_file_is_kept_and_resumed_by_the_next_run(tmp_path: Path, server: FileServer, capsys) -> None:
    server.payload = dense_haze_zip()
    server.cut, server.cut_times = 1000, 1
    assert run_dense(tmp_path, "--url", server.url, "--retries", "0") == 1
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the command again to resume" in err
    part = tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip.part"
    assert part.stat().st_size == 1000
    assert not (tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip").exists()  # never mistaken for complete
    assert not (tmp_path / "dense_haze").exists()
    assert run_dense(tmp_path, "--url", server.url, "--retries", "0") == 0
    assert server.requests[-1]["range"] == "bytes=1000-"
    assert_prepared(tmp_path)


def test_corrupt_archive_fails_clearly(tmp_path: Path, server: FileServer, capsys) -> None:
    server.payload = corrupt_member(dense_haze_zip(), "GT/33_GT.png")
    assert run_dense(tmp_path, "--url", server.url) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "33_GT.png" in err and "--from-zip" in err
    assert not (tmp_path / "dense_haze").exists()
    assert not (tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip").exists()  # deleted: next run re-fetches
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncated_or_html_archive_fails_clearly(tmp_path: Path, server: FileServer, capsys) -> None:
    server.payload = dense_haze_zip()[:-200]  # central directory cut off
    assert run_dense(tmp_path, "--url", server.url) == 1
    assert "not a valid zip archive" in capsys.readouterr().err
    server.payload = b"<!DOCTYPE html><html><body>Page moved</body></html>"
    server.content_type = "text/html"
    assert run_dense(tmp_path, "--url", server.url) == 1
    err = capsys.readouterr().err
    assert "web page" in err and "--from-zip" in err


def test_dead_link_says_download_manually(tmp_path: Path, server: FileServer, capsys) -> None:
    server.status = 404
    assert run_dense(tmp_path, "--url", server.url) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "dead" in err and "--from-zip" in err and "download_dense_haze.py" in err
    assert not (tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip").exists()


def test_from_zip_and_missing_files_listed(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(dense_haze_zip(skip=("GT/07_GT.png", "hazy/33_hazy.png")))
    root = tmp_path / "data"
    assert run_dense(root, "--from-zip", str(bad)) == 1
    err = capsys.readouterr().err
    assert "lacks 2 of the 110" in err
    assert re.findall(r"^\s+(\S+\.png)$", err, re.MULTILINE) == ["GT/07_GT.png", "hazy/33_hazy.png"]
    assert bad.exists()  # the user's file is never deleted
    good = tmp_path / "Dense_Haze_NTIRE19.zip"
    good.write_bytes(dense_haze_zip(prefix=""))
    assert run_dense(root, "--from-zip", str(good)) == 0
    assert_prepared(root)
    assert not (root / "downloads").exists()
    assert run_dense(root, "--from-zip", str(good)) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_from_extracted_folder_and_force(tmp_path: Path) -> None:
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(io.BytesIO(dense_haze_zip())) as zf:
        zf.extractall(folder)
    root = tmp_path / "data"
    assert run_dense(root, "--from-zip", str(folder)) == 0
    (root / "dense_haze" / "train" / "hazy" / "01_hazy.png").unlink()
    assert run_dense(root, "--from-zip", str(folder)) == 0  # incomplete: rebuilt
    assert_prepared(root)
    assert run_dense(root, "--from-zip", str(folder), "--force") == 0
    assert_prepared(root)


# ------------------------------------------------------------------------------------------
# _common.download directly
# ------------------------------------------------------------------------------------------


def test_download_helper_checks_size_and_restarts_without_range(tmp_path: Path, server: FileServer) -> None:
    server.payload = bytes(range(256)) * 40
    dest = tmp_path / "file.bin"
    with pytest.raises(common.DownloadError, match="expected 5"):
        common.download(server.url, dest, expected_size=5, progress=False)
    assert not dest.exists()
    # A stale .part from another URL is discarded, not glued to the new file.
    part = tmp_path / "file.bin.part"
    part.write_bytes(b"x" * 100)
    common.download(server.url, dest, progress=False, retry_wait=0)
    assert dest.read_bytes() == server.payload and not part.exists()
    assert server.requests[-1]["range"] is None
    # Present and complete: nothing fetched.
    n = len(server.requests)
    common.download(server.url, dest, expected_size=len(server.payload), progress=False)
    assert len(server.requests) == n
    # A server that ignores Range (200 instead of 206): the .part restarts from zero.
    dest3 = tmp_path / "norange.bin"
    (tmp_path / "norange.bin.part").write_bytes(server.payload[:300])
    (tmp_path / "norange.bin.part.json").write_text(f'{{"url": "{server.url}"}}')
    server.ignore_range = True
    common.download(server.url, dest3, progress=False)
    assert server.requests[-1]["range"] == "bytes=300-"
    assert dest3.read_bytes() == server.payload
    server.ignore_range = False
    # A .part that is already complete: the server answers 416, the file is finished.
    dest2 = tmp_path / "again.bin"
    (tmp_path / "again.bin.part").write_bytes(server.payload)
    (tmp_path / "again.bin.part.json").write_text(f'{{"url": "{server.url}"}}')
    common.download(server.url, dest2, progress=False, sha256=common.sha256sum(dest))
    assert dest2.read_bytes() == server.payload


def test_download_helper_sha256_mismatch(tmp_path: Path, server: FileServer) -> None:
    server.payload = b"hello"
    with pytest.raises(common.DownloadError, match="Checksum mismatch"):
        common.download(server.url, tmp_path / "h", sha256="0" * 64, progress=False)
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.part").exists()


# ------------------------------------------------------------------------------------------
# prepare_lol.py / prepare_rain.py
# ------------------------------------------------------------------------------------------


def fake_pairs(base: Path, subdir: str, pair: tuple[str, str], n: int, ext: str = ".png") -> None:
    for i in range(n):
        for k, side in enumerate(pair):
            path = base / subdir / side / f"{i + 1}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tiny_png(10 * i + k))


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return dest


def test_prepare_lol_from_folder_with_count_warning(tmp_path: Path, capsys) -> None:
    src = tmp_path / "download"
    fake_pairs(src, "LOLdataset/our485", ("low", "high"), 5)
    fake_pairs(src, "LOLdataset/eval15", ("low", "high"), 15)
    (src / "LOLdataset/our485/low/99.png").write_bytes(tiny_png(99))  # no partner
    root = tmp_path / "data"
    assert lol.main(["--root", str(root), "--source", str(src)]) == 0
    captured = capsys.readouterr()
    assert "our485: found 5 pairs, expected 485" in captured.err
    assert "eval15: found" not in captured.err  # 15 is right
    assert "99.png" in captured.err
    assert sorted(p.name for p in (root / "lol/our485/low").iterdir()) == [f"{i}.png" for i in range(1, 6)]
    assert len(PairedImageDataset(root / "lol", "lol", "train")) == 5
    assert len(PairedImageDataset(root / "lol", "lol", "test")) == 15
    assert lol.main(["--root", str(root)]) == 0  # idempotent, no source needed
    assert captured.out.count("nothing to do") == 0
    assert capsys.readouterr().out.count("nothing to do") == 2


def test_published_folders_have_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """Issue 44, case 2: a published folder is readable as any new folder of the user's is (the
    umask's mode, 0755 under 022), not mkdtemp's 0700."""
    import os
    import stat

    src = tmp_path / "download"
    fake_pairs(src, "LOLdataset/our485", ("low", "high"), 2)
    fake_pairs(src, "LOLdataset/eval15", ("low", "high"), 2)
    old = os.umask(0o022)
    try:
        assert lol.main(["--root", str(tmp_path / "data"), "--source", str(src)]) == 0
    finally:
        os.umask(old)
    for sub in ("lol/our485", "lol/eval15"):
        assert stat.S_IMODE((tmp_path / "data" / sub).stat().st_mode) == 0o755, sub


def test_prepare_lol_from_zip_and_missing_subset(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    fake_pairs(src, "our485", ("low", "high"), 3)
    archive = zip_folder(src, tmp_path / "LOL.zip")
    root = tmp_path / "data"
    assert lol.main(["--root", str(root), "--source", str(archive)]) == 1
    err = capsys.readouterr().err
    assert "our485: found 3 pairs, expected 485" in err
    assert "eval15: a folder named eval15" in err
    assert (root / "lol/our485/high/3.png").read_bytes() == tiny_png(21)
    assert not (root / "lol/eval15").exists()


def test_prepare_rain_from_two_zips_and_mprnet_layout(tmp_path: Path, capsys) -> None:
    train_src, test_src = tmp_path / "train_src", tmp_path / "test_src"
    fake_pairs(train_src, "train/Rain13K", ("input", "target"), 4, ext=".jpg")
    fake_pairs(test_src, "test/Rain100H", ("input", "target"), 100)
    fake_pairs(test_src, "test/Rain100L", ("input", "target"), 2)  # ignored
    root = tmp_path / "data"
    rc = rain.main(
        [
            "--root", str(root),
            "--source", str(zip_folder(train_src, tmp_path / "train.zip")),
            "--source", str(zip_folder(test_src, tmp_path / "test.zip")),
        ]
    )  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "train/Rain13K: found 4 pairs, expected 13,712" in err
    assert "Rain100H: found" not in err
    assert len(PairedImageDataset(root / "rain", "rain", "train", verify="header")) == 4
    assert len(PairedImageDataset(root / "rain", "rain", "test")) == 100
    # MPRNet's layout (train/{input,target}) is recognised as well.
    mpr = tmp_path / "mpr"
    fake_pairs(mpr, "Datasets/train", ("input", "target"), 2)
    root2 = tmp_path / "data2"
    assert rain.main(["--root", str(root2), "--source", str(mpr)]) == 1  # no Rain100H here
    err = capsys.readouterr().err
    assert "found 2 pairs, expected 13,712" in err and "test/Rain100H" in err
    assert sorted(p.name for p in (root2 / "rain/train/Rain13K/input").iterdir()) == ["1.png", "2.png"]


def test_prepare_scripts_need_a_source(tmp_path: Path, capsys) -> None:
    assert rain.main(["--root", str(tmp_path)]) == 1
    assert "pass --source" in capsys.readouterr().err
    assert lol.main(["--root", str(tmp_path), "--source", str(tmp_path / "missing.zip")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bmp_and_tiff_are_converted_to_png_losslessly(tmp_path: Path, capsys) -> None:
    """They used to be copied as they were, and the trainer then refused them."""
    from PIL import Image

    src = tmp_path / "download"
    g = np.random.default_rng(0)
    pixels = {}
    for i in range(3):
        for side, ext in (("low", ".bmp"), ("high", ".tif")):
            arr = g.integers(0, 256, (12, 16, 3)).astype(np.uint8)
            path = src / "our485" / side / f"{i + 1}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            pixels[(side, i + 1)] = arr
    fake_pairs(src, "eval15", ("low", "high"), 15)
    root = tmp_path / "data"
    assert lol.main(["--root", str(root), "--source", str(zip_folder(src, tmp_path / "l.zip"))]) == 0
    assert "6 BMP/TIFF image(s) converted to PNG" in capsys.readouterr().out  # 3 pairs
    ds = PairedImageDataset(root / "lol", "lol", "train")
    for (side, i), arr in pixels.items():
        png = root / "lol/our485" / side / f"{i}.png"
        assert np.array_equal(np.asarray(Image.open(png)), arr)
    assert len(ds) == 3 and sorted(p.suffix for p in (root / "lol/our485/low").iterdir()) == [".png"] * 3


def test_an_image_a_png_cannot_hold_stops_the_script_with_nothing_written(tmp_path: Path,
                                                                         capsys) -> None:
    from PIL import Image

    src = tmp_path / "download"
    fake_pairs(src, "eval15", ("low", "high"), 15)
    fake_pairs(src, "our485", ("low", "high"), 2)
    (src / "our485/high/2.png").unlink()
    Image.new("CMYK", (16, 12)).save(src / "our485/high/2.tif")
    root = tmp_path / "data"
    assert lol.main(["--root", str(root), "--source", str(src)]) == 1
    err = capsys.readouterr().err
    assert "2.tif: pixel mode CMYK cannot be stored exactly in a PNG" in err
    assert not (root / "lol/our485").exists()
