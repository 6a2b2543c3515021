"""data_scripts/ never delete what they did not create, and fail with one line, not a traceback.

Table-driven: for each script, inputs that used to make it delete a user's files (a source inside
the destination it rebuilds, a destination holding the user's own files, ...) must now end with
exit status 1, exactly one ``error: ...`` line on stderr, and every file under the test's folder
unchanged. Then the top-level handler (``--debug`` / ``DIFFLOSS_DEBUG=1``, Ctrl-C = 130), the
sweep of temporary folders left by killed runs, and the download record that tells a file the
scripts downloaded from one a user put there. No network: the ADM downloader talks to a server on
127.0.0.1; the Dense-Haze cases use local archives only.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.local_server import PayloadServer

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "data_scripts"
FIXTURES = Path(__file__).parent / "fixtures"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"safety_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dense = load_script("download_dense_haze")
lol = load_script("prepare_lol")
rain = load_script("prepare_rain")
adm = load_script("download_adm_prior")
common = dense._common  # the very module the scripts use (imported as ``_common``)
assert lol.prepare_cli.__module__ == common.__name__ == adm.sha256sum.__module__


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("DIFFLOSS_DEBUG", raising=False)


def png(seed: int) -> bytes:
    """A valid 1x1 RGB PNG whose colour depends on ``seed``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = bytes([0, seed % 256, (seed * 7) % 256, (seed * 13) % 256])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixel)) + chunk(b"IEND", b""))


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def zip_of(folder: Path, dest: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return write(dest, buf.getvalue())


def snapshot(base: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``base``: file bytes, link targets, None for folders."""
    out: dict[str, bytes | str | None] = {}
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base).as_posix()
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
    return out


def files_and_no_temporaries(base: Path) -> dict[str, bytes | str | None]:
    """The files under ``base`` (folders a failed run created and left empty do not count);
    and no hidden entry (a temporary folder) anywhere."""
    assert not [p for p in base.rglob(".*")], sorted(base.rglob(".*"))
    return {k: v for k, v in snapshot(base).items() if v is not None}


def one_error_line(err: str, *, warnings: bool = False) -> str:
    """The one line on stderr (besides ``warning:`` lines where ``warnings``), an error."""
    lines = [ln for ln in err.strip().splitlines() if not (warnings and ln.startswith("warning: "))]
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------
# Dense-Haze
# ------------------------------------------------------------------------------------------


def dense_tree(folder: Path) -> Path:
    """The official archive, extracted: Dense_Haze_NTIRE19/{hazy,GT}/NN_*.png and a readme."""
    top = folder / "Dense_Haze_NTIRE19"
    write(top / "readme.txt", "Dense-Haze, NTIRE 2019 (test fixture)\n")
    for i in range(1, 56):
        write(top / "hazy" / f"{i:02d}_hazy.png", png(i))
        write(top / "GT" / f"{i:02d}_GT.png", png(100 + i))
    return folder


def dense_zip(dest: Path) -> Path:
    staging = dest.parent / ".staging-dense"
    dense_tree(staging)
    zip_of(staging, dest)
    for p in sorted(staging.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    staging.rmdir()
    return dest


def run_dense(root: Path, *extra: str) -> int:
    return dense.main(["--root", str(root), "--no-progress", "--retry-wait", "0", "--timeout", "5",
                       "--url", "http://127.0.0.1:9/never-contacted.zip", *extra])


def _dense_source_is_destination(tmp: Path) -> list[str]:
    dest = tmp / "data" / "dense_haze"
    dense_tree(dest)
    write(dest / "my_notes.txt", "my own notes\n")
    return ["--from-zip", str(dest)]  # the command line


def _dense_source_inside_destination(tmp: Path) -> list[str]:
    dest = tmp / "data" / "dense_haze"
    dense_tree(dest / "extracted")
    return ["--from-zip", str(dest / "extracted")]


def _dense_archive_inside_destination(tmp: Path) -> list[str]:
    dest = tmp / "data" / "dense_haze"
    write(dest / "notes.txt", "keep me\n")
    return ["--from-zip", str(dense_zip(dest / "Dense_Haze_NTIRE19.zip"))]


def _dense_destination_holds_users_files(tmp: Path) -> list[str]:
    dest = tmp / "data" / "dense_haze"
    write(dest / "train" / "hazy" / "01_hazy.png", png(999))  # the user's own layout, no manifest
    write(dest / "notes.txt", "keep me\n")
    return ["--from-zip", str(dense_zip(tmp / "Dense_Haze_NTIRE19.zip"))]


def _dense_earlier_output_with_a_file_added(tmp: Path) -> list[str]:
    archive = dense_zip(tmp / "Dense_Haze_NTIRE19.zip")
    assert run_dense(tmp / "data", "--from-zip", str(archive)) == 0
    write(tmp / "data" / "dense_haze" / "test" / "my_result.txt", "PSNR 17.3\n")
    return ["--from-zip", str(archive), "--force"]


def _dense_destination_is_a_file(tmp: Path) -> list[str]:
    write(tmp / "data" / "dense_haze", "a file of the user's\n")
    return ["--from-zip", str(dense_zip(tmp / "Dense_Haze_NTIRE19.zip"))]


DENSE_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("source-is-the-destination", _dense_source_is_destination, "is the destination"),
    ("source-inside-the-destination", _dense_source_inside_destination, "lies inside the destination"),
    ("archive-inside-the-destination", _dense_archive_inside_destination, "lies inside the destination"),
    ("destination-holds-the-users-files", _dense_destination_holds_users_files, "did not write"),
    ("earlier-output-with-a-users-file-force", _dense_earlier_output_with_a_file_added,
     "did not write (test/my_result.txt)"),
    ("destination-is-a-file", _dense_destination_is_a_file, "is a file"),
]


@pytest.mark.parametrize("setup, expected", [c[1:] for c in DENSE_CASES], ids=[c[0] for c in DENSE_CASES])
def test_dense_haze_refuses_to_delete_the_users_files(tmp_path, capsys, setup, expected):
    argv = setup(tmp_path)
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert run_dense(tmp_path / "data", *argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and ("--root" in line)
    assert snapshot(tmp_path) == before  # nothing deleted, moved or added


def test_dense_haze_output_carries_a_manifest_and_an_empty_destination_is_fine(tmp_path):
    root = tmp_path / "data"
    (root / "dense_haze").mkdir(parents=True)  # an empty folder holds nothing to lose
    assert run_dense(root, "--from-zip", str(dense_zip(tmp_path / "d.zip"))) == 0
    manifest = json.loads((root / "dense_haze" / common.MANIFEST).read_text())
    assert manifest["written_by"] == common.WRITER and len(manifest["files"]) == 110
    assert "train/hazy/01_hazy.png" in manifest["files"]
    (root / "dense_haze" / "train" / "hazy" / "01_hazy.png").unlink()  # incomplete: rebuilt
    assert run_dense(root, "--from-zip", str(tmp_path / "d.zip")) == 0
    assert (root / "dense_haze" / "train" / "hazy" / "01_hazy.png").read_bytes() == png(1)


def test_an_archive_the_script_did_not_download_is_never_deleted(tmp_path, capsys):
    root = tmp_path / "data"
    # A web page saved under the archive's name, put into downloads/ by the user: kept.
    page = write(root / "downloads" / "Dense_Haze_NTIRE19.zip", b"<!DOCTYPE html><html>moved</html>")
    assert run_dense(root) == 1
    err = capsys.readouterr().err
    assert "web page" in err and "was not downloaded by this script, so it is kept" in err
    assert page.read_bytes() == b"<!DOCTYPE html><html>moved</html>"
    # A good archive put there by the user: used, and --remove-archive leaves it alone.
    dense_zip(page)
    data = page.read_bytes()
    assert run_dense(root, "--remove-archive") == 0
    assert "this script did not download it" in capsys.readouterr().out
    assert page.read_bytes() == data
    # _common.download does not replace a user's file that does not match either.
    with pytest.raises(common.DownloadError, match="did not download it, so it is not replaced"):
        common.download("http://127.0.0.1:9/x", page, expected_size=len(data) + 1, progress=False)
    assert page.read_bytes() == data


# ------------------------------------------------------------------------------------------
# prepare_lol.py / prepare_rain.py
# ------------------------------------------------------------------------------------------

PREPARE = {
    # script, data folder, the subsets' layout in a download, the first subset's destination
    "lol": (lol, "lol", ("our485/low", "our485/high", "eval15/low", "eval15/high"), "our485", ("low", "high")),
    "rain": (rain, "rain", ("train/Rain13K/input", "train/Rain13K/target", "test/Rain100H/input",
                            "test/Rain100H/target"), "train/Rain13K", ("input", "target")),
}


def download_tree(base: Path, which: str) -> Path:
    for k, sub in enumerate(PREPARE[which][2]):
        for i in range(1, 3):
            write(base / sub / f"{i}.png", png(10 * k + i))
    write(base / "readme.txt", "the dataset's readme\n")
    return base


def first_dest(tmp: Path, which: str) -> Path:
    return tmp / "data" / PREPARE[which][1] / PREPARE[which][3]


def _prep_source_is_destination(tmp: Path, which: str) -> list[str]:
    dest = first_dest(tmp, which)  # the user extracted the download right there
    download_tree(dest, which)
    write(dest / "my_notes.txt", "my own notes\n")
    return ["--source", str(dest)]


def _prep_archive_inside_destination(tmp: Path, which: str) -> list[str]:
    dest = first_dest(tmp, which)
    archive = zip_of(download_tree(tmp / "dl", which), dest / "download.zip")
    return ["--source", str(archive)]


def _prep_destination_holds_users_files_force(tmp: Path, which: str) -> list[str]:
    dest = first_dest(tmp, which)
    for side in PREPARE[which][4]:
        write(dest / side / "1.png", png(77))  # the user's own pairs, no manifest
    write(dest / "notes.txt", "keep me\n")
    return ["--source", str(download_tree(tmp / "dl", which)), "--force"]


def _prep_destination_holds_users_notes(tmp: Path, which: str) -> list[str]:
    write(first_dest(tmp, which) / "notes.txt", "keep me\n")
    return ["--source", str(download_tree(tmp / "dl", which))]


def _prep_earlier_output_with_a_file_added(tmp: Path, which: str) -> list[str]:
    source = download_tree(tmp / "dl", which)
    script = PREPARE[which][0]
    assert script.main(["--root", str(tmp / "data"), "--source", str(source)]) == 0
    write(first_dest(tmp, which) / "my_result.txt", "PSNR 17.3\n")
    return ["--source", str(source), "--force"]


def _prep_destination_is_a_file(tmp: Path, which: str) -> list[str]:
    write(first_dest(tmp, which), "a file of the user's\n")
    return ["--source", str(download_tree(tmp / "dl", which))]


PREPARE_CASES: list[tuple[str, Callable[[Path, str], list[str]], str]] = [
    ("source-is-the-destination", _prep_source_is_destination, "is the destination"),
    ("archive-inside-the-destination", _prep_archive_inside_destination, "lies inside the destination"),
    ("destination-holds-the-users-pairs-force", _prep_destination_holds_users_files_force, "did not write"),
    ("destination-holds-the-users-notes", _prep_destination_holds_users_notes, "did not write (notes.txt"),
    ("earlier-output-with-a-users-file-force", _prep_earlier_output_with_a_file_added,
     "did not write (my_result.txt)"),
    ("destination-is-a-file", _prep_destination_is_a_file, "is a file"),
]


@pytest.mark.parametrize("which", sorted(PREPARE))
@pytest.mark.parametrize("setup, expected", [c[1:] for c in PREPARE_CASES], ids=[c[0] for c in PREPARE_CASES])
def test_prepare_scripts_refuse_to_delete_the_users_files(tmp_path, capsys, which, setup, expected):
    argv = setup(tmp_path, which)
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert PREPARE[which][0].main(["--root", str(tmp_path / "data"), *argv]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and "--root" in line
    assert snapshot(tmp_path) == before


def test_prepare_rebuilds_its_own_output_with_force(tmp_path):
    source = download_tree(tmp_path / "dl", "lol")
    root = tmp_path / "data"
    assert lol.main(["--root", str(root), "--source", str(source)]) == 0
    manifest = json.loads((root / "lol" / "our485" / common.MANIFEST).read_text())
    assert manifest["files"] == ["high/1.png", "high/2.png", "low/1.png", "low/2.png"]
    write(source / "our485" / "low" / "1.png", png(5))
    assert lol.main(["--root", str(root), "--source", str(source), "--force"]) == 0
    assert (root / "lol" / "our485" / "low" / "1.png").read_bytes() == png(5)
    assert not [p for p in (root / "lol").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------
# download_adm_prior.py
# ------------------------------------------------------------------------------------------


class _Server(PayloadServer):
    """The ADM checkpoint's download address on the local server."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.url = self.root + "256x256_diffusion_uncond.pt"


@pytest.fixture(scope="module")
def adm_ref():
    torch = pytest.importorskip("torch")
    return torch.load(FIXTURES / "adm_small_reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture
def adm_files(tmp_path, adm_ref, monkeypatch) -> Iterator[dict]:
    import torch

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    buf = io.BytesIO()
    torch.save(adm_ref["state_dict"], buf)
    server = _Server(buf.getvalue())
    files = {"server": server, "ckpt": write(tmp_path / "ckpt.pt", buf.getvalue()),
             "flags": write(tmp_path / "flags.json", json.dumps(adm_ref["config"]))}
    yield files
    server.close()


def fake_conversion(folder: Path, flags: dict) -> Path:
    """What a previous conversion left (a UNet2DModel config and its adm_flags.json marker)."""
    write(folder / "config.json", json.dumps({"_class_name": "UNet2DModel"}))
    write(folder / "adm_flags.json", json.dumps(flags))
    write(folder / "diffusion_pytorch_model.safetensors", b"weights of an earlier conversion")
    return folder


def _adm_out_is_users_file(tmp: Path, f: dict) -> list[str]:
    mine = write(tmp / "mine.pt", b"the user's own checkpoint")
    return ["--out", str(mine), "--expected-size", str(len(f["server"].payload)), "--no-convert",
            "--flags", str(f["flags"])]  # the small fixture's flags: no 2.2 GB size floor


def _adm_out_inside_diffusers_dir(tmp: Path, f: dict) -> list[str]:
    d = fake_conversion(tmp / "d", json.loads(f["flags"].read_text()))
    return ["--out", str(d / "adm.pt"), "--diffusers-dir", str(d), "--flags", str(f["flags"])]


def _adm_out_is_a_folder(tmp: Path, f: dict) -> list[str]:
    write(tmp / "models" / "notes.txt", "keep me\n")
    return ["--out", str(tmp / "models"), "--no-convert", "--flags", str(f["flags"])]


def _adm_flags_inside_diffusers_dir(tmp: Path, f: dict) -> list[str]:
    d = fake_conversion(tmp / "d", json.loads(f["flags"].read_text()))
    return ["--from-file", str(f["ckpt"]), "--flags", str(d / "adm_flags.json"), "--diffusers-dir", str(d)]


def _adm_diffusers_dir_holds_users_files(tmp: Path, f: dict) -> list[str]:
    write(tmp / "d" / "notes.txt", "keep me\n")
    return ["--out", str(tmp / "adm.pt"), "--diffusers-dir", str(tmp / "d"), "--flags", str(f["flags"])]


ADM_CASES: list[tuple[str, Callable[[Path, dict], list[str]], str]] = [
    ("out-is-the-users-file-of-another-size", _adm_out_is_users_file, "so it is not replaced"),
    ("out-inside-the-diffusers-dir", _adm_out_inside_diffusers_dir, "lies inside the destination"),
    ("out-is-a-folder", _adm_out_is_a_folder, "is a folder"),
    ("flags-inside-the-diffusers-dir", _adm_flags_inside_diffusers_dir, "lies inside the destination"),
    ("diffusers-dir-holds-the-users-files", _adm_diffusers_dir_holds_users_files,
     "holds files that a conversion does not write"),
]


@pytest.mark.parametrize("setup, expected", [c[1:] for c in ADM_CASES], ids=[c[0] for c in ADM_CASES])
def test_adm_prior_refuses_to_delete_the_users_files(tmp_path, capsys, adm_files, setup, expected):
    argv = setup(tmp_path, adm_files)
    before = snapshot(tmp_path)
    assert adm.main(["--url", adm_files["server"].url, "--no-progress", *argv]) == 1
    assert expected in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
    assert adm_files["server"].requests == []  # refused before downloading anything


def test_adm_prior_sweeps_only_its_own_stale_conversion_folders(tmp_path, capsys, adm_files, monkeypatch):
    monkeypatch.setattr(common, "_pid_alive", lambda pid: pid == 424242)
    old = time.time() - 2 * common.STALE_AFTER_S
    stale = write(tmp_path / ".d.tmp-abcdefgh" / "config.json", "{}").parent  # a killed conversion
    os.utime(stale / "config.json", (old, old))
    os.utime(stale, (old, old))
    dead_old = write(tmp_path / ".d.old-424241" / "adm_flags.json", "{}").parent
    live_old = write(tmp_path / ".d.old-424242" / "adm_flags.json", "{}").parent
    recent = write(tmp_path / ".d.tmp-zyxwvuts" / "config.json", "{}").parent  # maybe running now
    foreign = write(tmp_path / ".d.tmp-qqqqqqqq" / "notes.txt", "mine").parent  # not a conversion's
    os.utime(foreign / "notes.txt", (old, old))
    os.utime(foreign, (old, old))
    argv = ["--from-file", str(adm_files["ckpt"]), "--flags", str(adm_files["flags"]),
            "--diffusers-dir", str(tmp_path / "d"), "--no-progress"]
    assert adm.main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "d" / "adm_flags.json").is_file()
    assert not stale.exists() and not dead_old.exists()
    assert live_old.exists() and recent.exists() and (foreign / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------
# Temporary folders of a killed run are swept; only those matching the scripts' pattern
# ------------------------------------------------------------------------------------------


def test_stale_temporary_folders_are_swept_and_nothing_else(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "_pid_alive", lambda pid: pid == 424242)
    root = tmp_path / "data"
    old = time.time() - 2 * common.STALE_AFTER_S

    def folder(name: str, age: float | None = None) -> Path:
        path = write(root / name / "train" / "hazy" / "01_hazy.png", png(1)).parents[2]
        if age is not None:
            for p in [*path.rglob("*"), path]:
                os.utime(p, (age, age))
        return path

    swept = [folder(".dense_haze.tmp-424241-abcdefgh"), folder(".dense_haze.old-424241"),
             folder(f".dense_haze.tmp-{os.getpid()}-abcdefgh"),  # this pid, not building it: stale
             folder(".dense_haze.tmp-abcdefgh", age=old)]  # older versions' name, long untouched
    kept = [folder(".dense_haze.tmp-424242-abcdefgh"), folder(".dense_haze.old-424242"),  # running
            folder(".dense_haze.tmp-zyxwvuts"),  # older versions' name, touched just now
            folder(".dense_haze.tmp-notes", age=old), folder("dense_haze.tmp-424241-abcdefgh"),
            folder(".lol.tmp-424241-abcdefgh"), folder(".dense_haze.tmp-424241-abcdefgh.bak")]
    assert run_dense(root, "--from-zip", str(dense_zip(tmp_path / "d.zip"))) == 0
    out = capsys.readouterr().out
    assert all(not p.exists() and f"Removed {p}" in out for p in swept)
    assert all((p / "train" / "hazy" / "01_hazy.png").read_bytes() == png(1) for p in kept)
    # A run with nothing to do sweeps too, and so do the prepare scripts.
    again = folder(".dense_haze.tmp-424241-qwertyui")
    lol_tmp = folder("lol/.our485.tmp-424241-abcdefgh")
    assert run_dense(root, "--from-zip", str(tmp_path / "d.zip")) == 0
    assert lol.main(["--root", str(root)]) == 1  # nothing prepared, no --source: an error, but swept
    assert not again.exists() and not lol_tmp.exists()


def test_pid_alive_tells_a_live_process_from_a_finished_one():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    assert common._pid_alive(os.getpid()) and not common._pid_alive(int(child.stdout))


# ------------------------------------------------------------------------------------------
# The top-level handler: one line, exit 1 (Ctrl-C 130); --debug / DIFFLOSS_DEBUG=1 re-raise
# ------------------------------------------------------------------------------------------


def _handler_case(which: str, tmp: Path, monkeypatch, exc: BaseException) -> tuple[Callable, list[str]]:
    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    if which == "adm":
        monkeypatch.setattr(adm, "verify_file", boom)
        return adm.main, ["--from-file", str(write(tmp / "x.pt", b"x")), "--diffusers-dir", str(tmp / "d")]
    monkeypatch.setattr(common.Source, "copy", boom)
    if which == "dense":
        return dense.main, ["--root", str(tmp / "data"), "--no-progress", "--from-zip",
                            str(dense_zip(tmp / "d.zip"))]
    script = PREPARE[which][0]
    return script.main, ["--root", str(tmp / "data"), "--source", str(download_tree(tmp / "dl", which))]


@pytest.mark.parametrize("which", ["dense", "lol", "rain", "adm"])
def test_an_unexpected_error_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch, which):
    main, argv = _handler_case(which, tmp_path, monkeypatch, RuntimeError("disk\nexploded"))
    before = files_and_no_temporaries(tmp_path)
    assert main(argv) == 1
    line = one_error_line(capsys.readouterr().err, warnings=True)  # the pair counts' warnings
    assert "RuntimeError: disk exploded" in line and "--debug" in line
    assert files_and_no_temporaries(tmp_path) == before
    with pytest.raises(RuntimeError, match="disk"):
        main([*argv, "--debug"])
    monkeypatch.setenv("DIFFLOSS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk"):
        main(argv)


@pytest.mark.parametrize("which", ["dense", "lol", "rain", "adm"])
def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch, which):
    main, argv = _handler_case(which, tmp_path, monkeypatch, KeyboardInterrupt())
    before = files_and_no_temporaries(tmp_path)
    try:
        status = main(argv)
    except KeyboardInterrupt:  # would stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped main()")
    assert status == 130
    assert "interrupted" in one_error_line(capsys.readouterr().err, warnings=True)
    assert files_and_no_temporaries(tmp_path) == before
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--debug"])


@pytest.mark.parametrize("script, source", [
    ("download_dense_haze.py", "zip"), ("prepare_lol.py", "lol"), ("prepare_rain.py", "rain")])
def test_a_real_process_prints_no_traceback(tmp_path, script, source):
    """``--root`` is a file: an OSError deep inside; one line, status 1; --debug shows it all."""
    write(tmp_path / "root", "a file, not a folder\n")
    if source == "zip":
        args = ["--no-progress", "--from-zip", str(dense_zip(tmp_path / "d.zip"))]
    else:
        args = ["--source", str(download_tree(tmp_path / "dl", source))]
    cmd = [sys.executable, str(SCRIPTS / script), "--root", str(tmp_path / "root"), *args]
    env = {k: v for k, v in os.environ.items() if k != "DIFFLOSS_DEBUG"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1, run.stderr
    line = one_error_line(run.stderr, warnings=True)
    assert str(tmp_path / "root") in line and "--debug" in line
    assert "File exists" in line or "Not a directory" in line
    for extra, extra_env in ((["--debug"], {}), ([], {"DIFFLOSS_DEBUG": "1"})):
        run = subprocess.run([*cmd, *extra], capture_output=True, text=True, env={**env, **extra_env},
                             timeout=120)
        assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr, run.stderr
