"""Nothing lost, nothing silent (issue 12): bad settings, damaged files and typos end in one clear
exception that names the bad value or file and how to fix it, never in a crash, a deep library
traceback or a silently wrong result.

Each test below failed on the code before the fix (a segfault, a silent default, a broadcast,
a hub download of a local path, a kept bad download, ...).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import make_tiny_unet  # tests/ is on sys.path (pytest's rootdir conftest)
from PIL import Image
from torchvision.io import encode_png

from diffloss import cli
from diffloss.adm import convert_adm_checkpoint, convert_adm_state_dict, read_adm_flags
from diffloss.data import ImageFileError, PairedImageDataset, load_image
from diffloss.loss import DiffLoss, fidelity_loss, restoration_loss
from diffloss.prior import DiffusionPrior

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
ADM_SMALL = Path(__file__).parent / "fixtures" / "adm_small_reference.pt"


def images(b: int = 2, size: int = 16, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, c, size, size, generator=g), torch.rand(b, c, size, size, generator=g)


# ------------------------------------------------------------------ 1. nonsense settings
@pytest.mark.parametrize("kwargs, name", [
    ({"lambda_sem": math.nan}, "lambda_sem"),
    ({"lambda_sem": math.inf}, "lambda_sem"),
    ({"lambda_sem": -1e-3}, "lambda_sem"),
    ({"nat_weight": math.inf}, "nat_weight"),
    ({"nat_weight": -math.inf}, "nat_weight"),
    ({"nat_weight": math.nan}, "nat_weight"),
    ({"nat_weight": True}, "nat_weight"),
])
def test_diffloss_rejects_non_finite_or_negative_weights(tiny_prior, kwargs, name) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got"):
        DiffLoss(tiny_prior, **kwargs)


@pytest.mark.parametrize("gamma", [-1, -1e-9, math.nan, math.inf, "x"])
def test_restoration_loss_rejects_bad_gamma(tiny_prior, gamma) -> None:
    y, x = images()
    for diffloss in (None, DiffLoss(tiny_prior)):
        with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
            restoration_loss(y, x, gamma=gamma, diffloss=diffloss)


@pytest.mark.parametrize("size", [0, -4, 15, 1, 8.5, "16", True])
def test_prior_size_must_be_a_positive_multiple_of_the_downsampling_factor(tiny_prior, size) -> None:
    # 0 used to mean "the default" silently, -4 failed deep inside a convolution.
    with pytest.raises(ValueError, match=r"prior_size must be a positive multiple of 2 .* native 16; got"):
        DiffLoss(tiny_prior, prior_size=size)
    assert DiffLoss(tiny_prior, prior_size=8).prior_size == 8
    assert DiffLoss(tiny_prior, prior_size=np.int64(4)).prior_size == 4


@pytest.mark.parametrize("t_range", [(5, 2), (-1, 5), (0, 1000), (0.5, 10), ("a", 3), (1, 2, 3), 7,
                                     (math.nan, 5)])
def test_t_range_outside_the_schedule_is_rejected(tiny_prior, t_range) -> None:
    with pytest.raises(ValueError, match=r"t_range must be two integers .* 0 <= t_min <= t_max <= 999 "
                                         r"\(the prior has T = 1000 steps\), got"):
        DiffLoss(tiny_prior, t_range=t_range)
    assert DiffLoss(tiny_prior, t_range=(torch.tensor(3), np.int32(999))).t_range == (3, 999)


# ------------------------------------------------------------------ 4. silent broadcasting
@pytest.mark.parametrize("shapes, match", [
    (((2, 3, 8, 8), (2, 1, 8, 8)), "same shape"),
    (((4, 3, 8, 8), (1, 3, 8, 8)), "same shape"),
    (((2, 3, 8, 8), (3, 8, 8)), r"target must be a B×C×H×W"),
    (((0, 3, 8, 8), (0, 3, 8, 8)), "empty"),
    (((2, 3, 0, 8), (2, 3, 0, 8)), "empty"),
])
def test_fidelity_and_restoration_loss_check_shapes(shapes, match) -> None:
    restored, target = torch.rand(*shapes[0]), torch.rand(*shapes[1])
    for fn in (fidelity_loss, restoration_loss):
        with pytest.raises(ValueError, match=match):
            fn(restored, target)


def test_losses_reject_integer_images_and_diffloss_needs_rgb(tiny_prior) -> None:
    y, x = images()
    with pytest.raises(ValueError, match="floating-point image.*uint8.*x.float\\(\\) / 255"):
        fidelity_loss((y * 255).to(torch.uint8), x)
    g1, g2 = images(c=1)
    assert torch.isfinite(fidelity_loss(g1, g2))  # the pixel loss alone works on any C
    with pytest.raises(ValueError, match=r"restored must be a B×3×H×W"):
        restoration_loss(g1, g2, diffloss=DiffLoss(tiny_prior))
    with pytest.raises(ValueError, match="empty"):
        DiffLoss(tiny_prior)(y[:0], x[:0])


# ------------------------------------------------------------------ 5. out-of-contract priors
@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_v_and_x0_prediction_priors_load_with_their_type(tiny_prior, tmp_path, kind) -> None:
    """Once refused; since issue 23 converted to ε (tests/test_priors_any.py checks the values)."""
    tiny_prior.save_pretrained(tmp_path)
    cfg_path = tmp_path / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = kind
    cfg_path.write_text(json.dumps(cfg))
    assert DiffusionPrior.from_pretrained(tmp_path).prediction_type == kind


def test_predict_xstart_adm_checkpoint_is_an_x0_prior() -> None:
    flags = {**torch.load(ADM_SMALL, weights_only=True)["config"], "predict_xstart": True}
    assert DiffusionPrior.from_adm_checkpoint(ADM_SMALL, flags).prediction_type == "sample"


def test_broken_scheduler_config_names_the_file(tiny_prior, tmp_path) -> None:
    tiny_prior.save_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text('{"num_train_timesteps": 1000,')
    with pytest.raises(ValueError, match=r"scheduler_config.json is not valid JSON \(.* line 1"):
        DiffusionPrior.from_pretrained(tmp_path)


def test_images_much_smaller_than_the_prior_warn_once(tiny_prior) -> None:
    loss = DiffLoss(tiny_prior)  # native 16×16
    y, x = images(size=4)
    with pytest.warns(UserWarning, match=r"4×4 images, less than half its native 16×16") as record:
        loss(y, x)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(y, x)  # once per DiffLoss
        DiffLoss(tiny_prior)(*images(size=8))  # half the native size: fine
    with pytest.raises(ValueError, match=r"smaller than the prior's downsampling factor 2.*native size is 16×16"):
        loss(*images(size=1))


def test_prior_with_non_finite_weights_is_rejected() -> None:
    unet = make_tiny_unet()
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"NaN/inf values \(conv_in.weight: 1\).*corrupt"):
        DiffusionPrior(unet)


def test_damaged_prior_folder_says_to_write_it_again(tiny_prior, tmp_path) -> None:
    tiny_prior.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OSError, match=rf"cannot load the prior in {tmp_path}: .*damaged: write it again"):
        DiffusionPrior.from_pretrained(tmp_path)


def test_images_on_another_device_than_the_target_or_prior(tiny_prior) -> None:
    y, x = images()
    with pytest.raises(ValueError, match="restored is on meta but target on cpu"):
        fidelity_loss(torch.empty(2, 3, 16, 16, device="meta"), x)
    with pytest.raises(ValueError, match=r"images are on meta but the prior on cpu.*diffloss.to\(device\)"):
        DiffLoss(tiny_prior)(y.to("meta"), x.to("meta"))


# ------------------------------------------------------------------ 6. typo in a local prior path
@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", ["/tmp/no_such_prior_7f3a", "./checkpoints/adm25", "~/no_such_prior_7f3a",
                                  "checkpoints/adm25", "adm.safetensors", "a/b/c", "my prior"])
def test_local_path_typo_is_not_sent_to_the_hub(offline, tmp_path, monkeypatch, name) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "adm-256").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no such folder: ") as info:
        DiffusionPrior.from_pretrained(name)
    msg = str(info.value)
    assert "config.json" in msg and "hub" not in msg and "huggingface" not in msg
    if "adm25" in name:
        assert "Did you mean checkpoints/adm-256?" in msg
    with pytest.raises(FileNotFoundError, match="no such folder: "):
        DiffusionPrior.from_pretrained(Path("no_such_folder"))  # a Path is always local


def test_hub_ids_still_go_to_the_hub(monkeypatch) -> None:
    calls = []

    def fake_hub(repo_id, **kwargs):
        calls.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr("diffloss.priors.loading._from_hub", fake_hub)
    for name in ("google/ddpm-ema-church-256", "someone/some.prior_v2", "gpt2"):
        with pytest.raises(OSError, match="offline"):
            DiffusionPrior.from_pretrained(name)
    assert calls == ["google/ddpm-ema-church-256", "someone/some.prior_v2", "gpt2"]


def test_a_checkpoint_file_instead_of_a_folder_says_how_to_load_it(tmp_path) -> None:
    ckpt = tmp_path / "256x256_diffusion_uncond.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a file.*from_adm_checkpoint.*diffloss convert-adm"):
        DiffusionPrior.from_pretrained(ckpt)


# ------------------------------------------------------------------ 3. ADM weights: NaN/inf, provenance
@pytest.fixture(scope="module")
def adm_ref():
    return torch.load(ADM_SMALL, map_location="cpu", weights_only=True)


def test_adm_converter_rejects_non_finite_weights(adm_ref) -> None:
    sd = {k: v.clone() for k, v in adm_ref["state_dict"].items()}
    sd["middle_block.1.qkv.weight"][0, 0, 0] = math.nan
    sd["out.2.bias"][0] = -math.inf
    with pytest.raises(ValueError, match=r"non-finite weights in 2 tensor\(s\): middle_block.1.qkv.weight "
                                         r"\(1 of \d+ values NaN/inf\), out.2.bias .*corrupt"):
        convert_adm_state_dict(sd, adm_ref["config"])


def test_adm_converter_rejects_a_float16_overflow(adm_ref) -> None:
    sd = dict(adm_ref["state_dict"])
    sd["out.2.bias"] = sd["out.2.bias"].clone().fill_(1e6)
    with pytest.raises(ValueError, match=r"out.2.bias \(overflows torch.float16.*float32 or bfloat16"):
        convert_adm_state_dict(sd, adm_ref["config"], dtype=torch.float16)
    with pytest.raises(ValueError, match="floating-point torch dtype"):
        convert_adm_state_dict(sd, adm_ref["config"], dtype=torch.int8)


def _write_adm(tmp_path: Path, adm_ref) -> tuple[Path, Path]:
    ckpt = tmp_path / "adm_small.pt"
    torch.save(adm_ref["state_dict"], ckpt)
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(adm_ref["config"]))
    return ckpt, flags


def test_checkpoint_path_that_is_a_folder(tmp_path) -> None:
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a guided-diffusion .pt file"):
        DiffusionPrior.from_adm_checkpoint(tmp_path)


def test_converted_folder_records_the_source_sha256(tmp_path, adm_ref) -> None:
    ckpt, flags = _write_adm(tmp_path, adm_ref)
    out = convert_adm_checkpoint(ckpt, tmp_path / "out", read_adm_flags(flags))
    info = json.loads((out / "adm_flags.json").read_text())
    assert info["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info["source_bytes"] == ckpt.stat().st_size and info["source_checkpoint"] == "adm_small.pt"


# ------------------------------------------------------------------ 7. converter: bad input and output
def test_flags_file_missing_or_invalid(tmp_path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match=r"flags file not found: .*nope.json\. Pass a JSON file"):
        read_adm_flags(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{'image_size': 256}")
    with pytest.raises(ValueError, match=r"flags file .*bad.json is not valid JSON \(.* line 1, column 2\)"):
        read_adm_flags(bad)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_adm_flags(tmp_path)
    assert cli.main(["convert-adm", str(ADM_SMALL), str(tmp_path / "o"), "--flags", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: flags file") and "Traceback" not in err


def test_output_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path, adm_ref, capsys) -> None:
    ckpt, flags = _write_adm(tmp_path, adm_ref)
    cfg = read_adm_flags(flags)
    a_file = tmp_path / "out.txt"
    a_file.write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"output .*out.txt is an existing file"):
        convert_adm_checkpoint(ckpt, a_file, cfg)
    with pytest.raises(NotADirectoryError, match=r"out.txt is a file"):
        convert_adm_checkpoint(ckpt, a_file / "sub", cfg)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"photos holds files that a conversion does not "
                                              r"write \(holiday.jpg\)"):
        convert_adm_checkpoint(ckpt, foreign, cfg)
    assert a_file.read_text() == "mine" and (foreign / "holiday.jpg").exists()
    assert cli.main(["convert-adm", str(ckpt), str(a_file), "--flags", str(flags)]) == 1
    assert capsys.readouterr().err.startswith("error: output ")


@pytest.mark.parametrize("files", [
    # a training run folder (it holds a config.json too): the converter deleted it, exit 0
    {"config.json": '{"model": "msbdn-small"}', "last.pt": "w", "history.csv": "step\n"},
    # a foreign diffusers model with the user's notes
    {"config.json": '{"_class_name": "UNet2DModel"}', "my_model.safetensors": "w",
     "notes.txt": "mine"},
    # a conversion the user added a file to
    {"config.json": '{"_class_name": "UNet2DModel"}', "adm_flags.json": "{}", "notes.txt": "mine"},
    # the conversion's marker beside another model class
    {"config.json": '{"_class_name": "UNet2DConditionModel"}', "adm_flags.json": "{}"},
])
def test_a_folder_that_is_not_a_previous_conversion_is_never_replaced(tmp_path, adm_ref, capsys,
                                                                      files) -> None:
    ckpt, flags = _write_adm(tmp_path, adm_ref)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    assert cli.main(["convert-adm", str(ckpt), str(out), "--flags", str(flags)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: output folder") and "nothing was changed" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_text() for p in out.iterdir()} == files


def test_a_previous_conversion_is_replaced(tmp_path, adm_ref) -> None:
    ckpt, flags = _write_adm(tmp_path, adm_ref)
    cfg = read_adm_flags(flags)
    out = convert_adm_checkpoint(ckpt, tmp_path / "prior", cfg)
    first = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    (out / "scheduler_config.json").unlink()  # even an incomplete one
    assert convert_adm_checkpoint(ckpt, out, cfg) == out
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json",
         "adm_flags.json"))


def test_disk_full_while_saving_leaves_nothing_half_written(tmp_path, adm_ref, monkeypatch) -> None:
    from diffusers import UNet2DModel

    ckpt, flags = _write_adm(tmp_path, adm_ref)
    cfg = read_adm_flags(flags)
    out = convert_adm_checkpoint(ckpt, tmp_path / "prior", cfg)  # a previous, good conversion
    before = sorted(p.name for p in out.iterdir())
    real_save = UNet2DModel.save_pretrained

    def disk_full(self, folder, **kwargs):
        (Path(folder) / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(UNet2DModel, "save_pretrained", disk_full)
    for target in (tmp_path / "fresh", out):
        with pytest.raises(OSError, match=r"could not write the converted prior to .*: No space left on "
                                          r"device\. Nothing was written there; it needs about") as info:
            convert_adm_checkpoint(ckpt, target, cfg)
        assert info.value.errno == errno.ENOSPC and "Traceback" not in str(info.value)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in out.iterdir()) == before  # the old conversion is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders
    monkeypatch.setattr(UNet2DModel, "save_pretrained", real_save)
    assert DiffusionPrior.from_pretrained(out).num_parameters() > 0


# ------------------------------------------------------------------ 2. damaged PNGs never crash
def _png(seed: int, size: int = 16) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return encode_png(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)).numpy().tobytes()


def _idat(data: bytes) -> tuple[int, int]:
    """(offset of the IDAT chunk's data, its length)."""
    i = data.index(b"IDAT")
    return i + 4, struct.unpack(">I", data[i - 4:i])[0]


def flip_idat_byte(data: bytes, fix_crc: bool = False) -> bytes:
    """Flip one byte in the middle of the pixel data; ``fix_crc`` recomputes the chunk's CRC, so
    only the deflate stream is broken."""
    start, n = _idat(data)
    out = bytearray(data)
    out[start + n // 2] ^= 0xFF
    if fix_crc:
        out[start + n:start + n + 4] = struct.pack(">I", zlib.crc32(bytes(out[start - 4:start + n])))
    return bytes(out)


# Runs in a subprocess: before the fix, torchvision's PNG decoder killed the process (SIGSEGV).
_DECODE_SCRIPT = r"""
import json, sys
from pathlib import Path
from diffloss.data import PairedImageDataset, load_image

def attempt(fn):
    try:
        value = fn()
        return ["ok", list(value) if isinstance(value, tuple) else value]
    except Exception as exc:
        return [type(exc).__name__, str(exc)]

root = Path(sys.argv[1])
for case in sorted(p.name for p in root.iterdir()):
    deg, clean = root / case / "hazy", root / case / "GT"
    res = {"load": attempt(lambda: tuple(load_image(deg / "b.png").shape))}
    res["full"] = attempt(lambda: len(PairedImageDataset((deg, clean), "folders", verify="full")))
    res["header"] = attempt(lambda: len(PairedImageDataset((deg, clean), "folders", verify="header")))
    if res["header"][0] == "ok":
        ds = PairedImageDataset((deg, clean), "folders", verify="header")
        res["item_bad"] = attempt(lambda: tuple(ds[ds.names.index("b")][0].shape))
        res["item_good"] = attempt(lambda: tuple(ds[ds.names.index("a")][0].shape))
    res["auto"] = attempt(lambda: len(PairedImageDataset((deg, clean), "folders")))
    print(json.dumps({case: res}), flush=True)
"""


def test_a_damaged_png_names_the_file_and_never_crashes(tmp_path) -> None:
    good = _png(1)
    damaged = {
        "flipped_idat_byte": flip_idat_byte(good),
        "broken_deflate_valid_crc": flip_idat_byte(good, fix_crc=True),
        "truncated": good[: len(good) * 2 // 3],
        "garbage_after_signature": good[:8] + b"\x00" * 40,
    }
    for case, data in damaged.items():
        deg, clean = tmp_path / case / "hazy", tmp_path / case / "GT"
        deg.mkdir(parents=True)
        clean.mkdir()
        for name in ("a", "b") + (tuple(f"n{i:03d}" for i in range(110)) if case == "truncated" else ()):
            (deg / f"{name}.png").write_bytes(_png(2, size=4 if name.startswith("n") else 16))
            (clean / f"{name}.png").write_bytes(_png(3, size=4 if name.startswith("n") else 16))
        (deg / "b.png").write_bytes(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _DECODE_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"decoding crashed the process (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    results = {}
    for line in proc.stdout.splitlines():
        results.update(json.loads(line))
    assert sorted(results) == sorted(damaged)
    for case, res in results.items():
        bad_file = str(tmp_path / case / "hazy" / "b.png")
        assert res["load"][0] == "ImageFileError" and res["load"][1].startswith(f"{bad_file}: corrupt PNG"), res
        assert res["full"][0] == "ValueError" and bad_file in res["full"][1], res  # all problems at once
        # header-only verification (what thousands of files get): a damaged header is reported at
        # once; damaged pixel data when its item is read, naming the file, and the other items
        # stay usable
        if case == "garbage_after_signature":
            assert res["header"][0] == "ValueError" and bad_file in res["header"][1], res
            continue
        assert res["item_bad"][0] == "ImageFileError" and bad_file in res["item_bad"][1], res
        assert res["item_good"] == ["ok", [3, 16, 16]], res
    assert results["truncated"]["auto"] == ["ok", 112]  # > 100 pairs: headers only at construction
    assert "CRC-32 mismatch in chunk IDAT" in results["flipped_idat_byte"]["load"][1]
    assert "damaged compressed image data" in results["broken_deflate_valid_crc"]["load"][1]
    assert "truncated" in results["truncated"]["load"][1]


def test_png_check_accepts_valid_variants_and_catches_every_single_byte_flip(tmp_path) -> None:
    from diffloss.data.images import _check_png

    def pil_png(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
        im = Image.fromarray(arr)
        im = im.convert(mode) if mode else im
        buf = io.BytesIO()
        im.save(buf, "PNG", **kw)
        return buf.getvalue()

    rng = np.random.default_rng(0)
    valid = [
        _png(5, size=13),
        pil_png(rng.integers(0, 256, (9, 7), dtype=np.uint8)),  # grey
        pil_png(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)),  # RGBA
        pil_png(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), "P"),  # palette
        pil_png(rng.integers(0, 2, (9, 13)).astype(bool), "1"),  # 1 bit
        pil_png(rng.integers(0, 256, (11, 10, 3), dtype=np.uint8), optimize=True),
        pil_png(rng.integers(0, 65536, (5, 6)).astype(np.uint16)),  # 16-bit grey
    ]
    for data in valid:
        _check_png(data, Path("x.png"))
    small = valid[0]
    for pos in range(8, len(small)):  # every byte after the signature (a bad one is tested above)
        data = bytearray(small)
        data[pos] ^= 0x41
        with pytest.raises(ImageFileError, match=r"^x.png: corrupt PNG \("):
            _check_png(bytes(data), Path("x.png"))


# ------------------------------------------------------------------ other bad images in a paired folder
def _pair_dirs(tmp_path: Path) -> tuple[Path, Path]:
    deg, clean = tmp_path / "deg", tmp_path / "clean"
    deg.mkdir()
    clean.mkdir()
    return deg, clean


def test_palette_transparency_is_not_dropped_silently(tmp_path) -> None:
    deg, clean = _pair_dirs(tmp_path)
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4
    im = Image.fromarray(arr, "L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.save(deg / "a.png", transparency=1)  # a tRNS chunk: index 1 fully transparent
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clean / "a.png")
    with pytest.raises(ImageFileError, match=r"a.png: has an alpha channel with transparent pixels"):
        load_image(deg / "a.png")
    with pytest.raises(ValueError, match="transparent"):
        PairedImageDataset((deg, clean), "folders")
    # fully opaque tRNS (and grey images) still load, as RGB
    im.save(deg / "a.png", transparency=bytes([255, 255, 255, 255]))
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(clean / "a.png")
    hazy, gt, _ = PairedImageDataset((deg, clean), "folders")[0]
    assert hazy.shape == gt.shape == (3, 8, 8) and torch.all(gt == 7 / 255)


@pytest.mark.parametrize("content, match", [
    (b"", "1 empty file"),
    (b"<!DOCTYPE html><html>Not found</html>", "unreadable or corrupt"),
])
def test_empty_or_non_image_file_named_png(tmp_path, content, match) -> None:
    deg, clean = _pair_dirs(tmp_path)
    for folder in (deg, clean):
        (folder / "a.png").write_bytes(_png(1))
    (deg / "b.png").write_bytes(content)
    (clean / "b.png").write_bytes(_png(2))
    pattern = rf"b.png: {match}" if content else r"deg: 1 empty file\(s\) of 0 bytes.*: b.png"
    for verify in ("full", "header"):
        with pytest.raises(ValueError, match=pattern):
            PairedImageDataset((deg, clean), "folders", verify=verify)


def test_size_mismatch_found_at_construction_or_when_read(tmp_path) -> None:
    deg, clean = _pair_dirs(tmp_path)
    (deg / "a.png").write_bytes(_png(1, size=16))
    (clean / "a.png").write_bytes(_png(2, size=8))
    with pytest.raises(ValueError, match=r"size mismatch in pair 'a'.*16×16.*8×8"):
        PairedImageDataset((deg, clean), "folders")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No images .* in .*empty"):
        PairedImageDataset((tmp_path / "empty", clean), "folders")


# ------------------------------------------------------------------ 8. a stuck download state
def test_incomplete_downloaded_dense_haze_archive_is_not_kept(tmp_path, capsys) -> None:
    import test_data_scripts as tds

    srv = tds.FileServer()
    try:
        srv.payload = tds.dense_haze_zip(skip=("GT/07_GT.png",))
        assert tds.run_dense(tmp_path, "--url", srv.url) == 1
        err = capsys.readouterr().err
        assert "lacks 1 of the 110" in err and "GT/07_GT.png" in err
        assert "was deleted: run again to download it afresh" in err and "--from-zip" in err
        assert not (tmp_path / "downloads" / "Dense_Haze_NTIRE19.zip").exists()
        srv.payload = tds.dense_haze_zip()  # the server's copy is complete again
        assert tds.run_dense(tmp_path, "--url", srv.url) == 0
        tds.assert_prepared(tmp_path)
    finally:
        srv.close()


def test_adm_download_with_a_wrong_sha256_is_not_resumed_forever(tmp_path, monkeypatch) -> None:
    import test_data_scripts as tds
    import test_download_adm as tda

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = tds.FileServer()
    try:
        srv.payload = b"x" * 1000
        for _ in range(2):  # before: the bad .part was kept, "resumed" as complete, failed again
            with pytest.raises(tda.dl.DownloadError, match="the downloaded file was deleted, run again"):
                tda.dl.download(srv.url, tmp_path / "m.pt", sha256="0" * 64, progress=False)
            assert not (tmp_path / "m.pt.part").exists()
        assert [r["range"] for r in srv.requests] == [None, None]
        (tmp_path / "m.pt").write_bytes(b"y" * 1000)  # an existing file is checked too
        with pytest.raises(tda.dl.DownloadError, match=r"m.pt exists but its SHA-256 is .* delete it"):
            tda.dl.download(srv.url, tmp_path / "m.pt", sha256="0" * 64, progress=False)
    finally:
        srv.close()
