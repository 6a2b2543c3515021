"""Paired datasets (pairing checks, conversions, joint augmentation) and synthetic haze."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg, encode_png

from diffloss.data import (
    TEST_IMAGES,
    TRAIN_IMAGES,
    ImageFileError,
    PairedImageDataset,
    SyntheticHaze,
    add_haze,
    depth_from_disparity,
    depth_proxy,
    load_image,
    sample_images,
    transmission,
)

# ------------------------------------------------------------------------------------------
# helpers: write small images
# ------------------------------------------------------------------------------------------


def rand_u8(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)


def write_png(path: Path, img: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(img).numpy().tobytes())
    return path


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (H×W×C, C = 1..4) written by hand: torchvision and Pillow only write 8-bit RGB."""
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_folders(tmp_path: Path, n: int = 3, h: int = 12, w: int = 16) -> tuple[Path, Path]:
    deg, clean = tmp_path / "deg", tmp_path / "clean"
    for i in range(n):
        write_png(deg / f"img{i}.png", rand_u8(3, h, w, i))
        write_png(clean / f"img{i}.png", rand_u8(3, h, w, 100 + i))
    return deg, clean


# ------------------------------------------------------------------------------------------
# layouts
# ------------------------------------------------------------------------------------------


def test_dense_haze_layout(tmp_path: Path) -> None:
    for split, ids in (("train", [1, 2, 3]), ("test", [51])):
        for i in ids:
            write_png(tmp_path / split / "hazy" / f"{i:02d}_hazy.png", rand_u8(3, 10, 14, i))
            write_png(tmp_path / split / "GT" / f"{i:02d}_GT.png", rand_u8(3, 10, 14, 50 + i))
    train = PairedImageDataset(tmp_path, "dense_haze", "train")
    test = PairedImageDataset(tmp_path, "dense_haze", "test")
    assert len(train) == 3 and len(test) == 1
    assert train.names == ["01", "02", "03"]
    hazy, gt, name = train[1]
    assert name == "02"
    assert hazy.shape == gt.shape == (3, 10, 14)
    assert hazy.dtype == torch.float32 and 0 <= hazy.min() and hazy.max() <= 1
    torch.testing.assert_close(hazy, rand_u8(3, 10, 14, 2).float() / 255)
    torch.testing.assert_close(gt, rand_u8(3, 10, 14, 52).float() / 255)


@pytest.mark.parametrize(
    ("layout", "train_dirs", "test_dirs"),
    [
        ("lol", ("our485/low", "our485/high"), ("eval15/low", "eval15/high")),
        ("rain", ("train/Rain13K/input", "train/Rain13K/target"), ("test/Rain100H/input", "test/Rain100H/target")),
    ],
)
def test_lol_and_rain_layouts(tmp_path: Path, layout: str, train_dirs: tuple, test_dirs: tuple) -> None:
    for dirs, n in ((train_dirs, 2), (test_dirs, 1)):
        for i in range(n):
            write_png(tmp_path / dirs[0] / f"{i}.png", rand_u8(3, 8, 8, i))
            write_png(tmp_path / dirs[1] / f"{i}.png", rand_u8(3, 8, 8, 10 + i))
    assert len(PairedImageDataset(tmp_path, layout, "train")) == 2
    test = PairedImageDataset(tmp_path, layout, "test")
    assert len(test) == 1
    deg, clean, name = test[0]
    torch.testing.assert_close(deg, rand_u8(3, 8, 8, 0).float() / 255)
    torch.testing.assert_close(clean, rand_u8(3, 8, 8, 10).float() / 255)


def test_folders_layout_dict_tuple_and_mixed_extensions(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path)
    (clean / "img0.png").unlink()
    (clean / "img0.jpg").write_bytes(encode_jpeg(rand_u8(3, 12, 16, 100), quality=95).numpy().tobytes())
    (deg / "notes.txt").write_text("ignored")
    (deg / ".DS_Store").write_bytes(b"\x00")
    for root in ({"degraded": deg, "clean": clean}, (deg, clean), [str(deg), str(clean)]):
        ds = PairedImageDataset(root, "folders")
        assert ds.names == ["img0", "img1", "img2"]
    d, c, name = ds[0]
    assert d.shape == c.shape == (3, 12, 16) and name == "img0"


def test_bad_layout_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout must be one of"):
        PairedImageDataset(tmp_path, "nope")
    with pytest.raises(ValueError, match="split must be"):
        PairedImageDataset(tmp_path, "lol", "val")
    with pytest.raises(ValueError, match="'degraded' and 'clean'"):
        PairedImageDataset({"degraded": tmp_path}, "folders")


# ------------------------------------------------------------------------------------------
# pairing errors
# ------------------------------------------------------------------------------------------


def test_empty_or_missing_folder_says_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        PairedImageDataset(tmp_path / "nowhere", "dense_haze", "train")
    assert str(tmp_path / "nowhere" / "train" / "hazy") in str(err.value)
    assert "NN_hazy.png" in str(err.value)
    (tmp_path / "our485" / "low").mkdir(parents=True)
    (tmp_path / "our485" / "high").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        PairedImageDataset(tmp_path, "lol", "train")
    assert "No images" in str(err.value) and str(tmp_path / "our485" / "low") in str(err.value)
    assert "our485/{low,high}" in str(err.value)


def test_unmatched_files_are_listed(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=4)
    (clean / "img1.png").unlink()
    (deg / "img3.png").unlink()
    write_png(clean / "extra.png", rand_u8(3, 12, 16))
    with pytest.raises(ValueError) as err:
        PairedImageDataset((deg, clean), "folders")
    msg = str(err.value)
    assert "img1.png" in msg and "without a clean partner" in msg
    assert "extra.png" in msg and "img3.png" in msg and "without a degraded partner" in msg
    assert "img0" not in msg and "img2" not in msg


def test_dense_haze_pairs_by_number(tmp_path: Path) -> None:
    write_png(tmp_path / "train/hazy/01_hazy.png", rand_u8(3, 8, 8))
    write_png(tmp_path / "train/GT/01_GT.png", rand_u8(3, 8, 8))
    write_png(tmp_path / "train/GT/02_GT.png", rand_u8(3, 8, 8))
    with pytest.raises(ValueError, match=r"02_GT\.png") as err:
        PairedImageDataset(tmp_path, "dense_haze", "train")
    assert "NN_hazy.png with NN_GT.png" in str(err.value)


def test_duplicate_stems_are_an_error(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=2)
    (deg / "img1.jpg").write_bytes(encode_jpeg(rand_u8(3, 12, 16)).numpy().tobytes())
    with pytest.raises(ValueError, match=r"img1\.jpg|img1\.png"):
        PairedImageDataset((deg, clean), "folders")


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=3)
    write_png(clean / "img2.png", rand_u8(3, 13, 16))
    for verify in ("full", "header"):
        with pytest.raises(ValueError) as err:
            PairedImageDataset((deg, clean), "folders", verify=verify)
        msg = str(err.value)
        assert "size mismatch" in msg and str(deg / "img2.png") in msg and str(clean / "img2.png") in msg
        assert "12×16" in msg and "13×16" in msg


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=3, h=32, w=32)
    (deg / "img0.png").write_bytes(b"this is not an image")
    data = (clean / "img1.png").read_bytes()
    (clean / "img1.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    with pytest.raises(ValueError) as err:
        PairedImageDataset((deg, clean), "folders", verify="full")
    msg = str(err.value)
    assert "2 problem(s)" in msg
    assert str(deg / "img0.png") in msg and str(clean / "img1.png") in msg and "corrupt" in msg
    # Header-only checks catch garbage at once; a truncated body is caught when loaded.
    with pytest.raises(ValueError, match="img0.png"):
        PairedImageDataset((deg, clean), "folders", verify="header")
    write_png(deg / "img0.png", rand_u8(3, 32, 32))
    ds = PairedImageDataset((deg, clean), "folders", verify="header")
    with pytest.raises(ImageFileError, match=r"img1\.png.*corrupt"):
        ds[1]


def test_unsupported_format_is_reported(tmp_path: Path) -> None:
    from PIL import Image

    deg, clean = make_folders(tmp_path, n=2)
    Image.new("RGB", (16, 12)).save(deg / "img9.bmp")
    with pytest.raises(ImageFileError, match=r"convert them to PNG\): img9\.bmp"):
        PairedImageDataset((deg, clean), "folders")


# ------------------------------------------------------------------------------------------
# pixel conversions: grayscale, 16-bit, alpha
# ------------------------------------------------------------------------------------------


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    gray = rand_u8(1, 6, 7)
    img = load_image(write_png(tmp_path / "g.png", gray))
    assert img.shape == (3, 6, 7)
    for c in range(3):
        torch.testing.assert_close(img[c], gray[0].float() / 255)


def test_16bit_png_scales_by_65535(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    rgb[0, 0] = 65535
    (tmp_path / "rgb16.png").write_bytes(png16(rgb))
    img = load_image(tmp_path / "rgb16.png")
    assert img.dtype == torch.float32 and img.shape == (3, 5, 6)
    expected = torch.from_numpy(rgb.astype(np.float64) / 65535).permute(2, 0, 1).float()
    torch.testing.assert_close(img, expected, atol=1e-7, rtol=0)
    assert img[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    gray = rng.integers(0, 65536, (5, 6, 1), dtype=np.uint16)
    (tmp_path / "g16.png").write_bytes(png16(gray))
    img = load_image(tmp_path / "g16.png")
    assert img.shape == (3, 5, 6)
    torch.testing.assert_close(img[1], torch.from_numpy(gray[..., 0] / 65535).float(), atol=1e-7, rtol=0)


def test_16bit_pairs_with_8bit(tmp_path: Path) -> None:
    deg, clean = tmp_path / "d", tmp_path / "c"
    deg.mkdir()
    (deg / "a.png").write_bytes(png16(np.full((4, 4, 3), 65535, np.uint16)))
    write_png(clean / "a.png", torch.full((3, 4, 4), 255, dtype=torch.uint8))
    d, c, _ = PairedImageDataset((deg, clean), "folders")[0]
    torch.testing.assert_close(d, c)
    d, c, _ = PairedImageDataset((deg, clean), "folders", crop=3, augment=True, cache=True)[0]
    assert d.shape == (3, 3, 3) and d.dtype == c.dtype == torch.float32
    torch.testing.assert_close(d, c)


def test_alpha_opaque_dropped_transparent_rejected(tmp_path: Path) -> None:
    from PIL import Image

    def write_rgba(path: Path, img: torch.Tensor) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy(), "RGBA").save(path)
        return path

    rgb = rand_u8(3, 5, 5)
    opaque = torch.cat([rgb, torch.full((1, 5, 5), 255, dtype=torch.uint8)])
    torch.testing.assert_close(load_image(write_rgba(tmp_path / "o.png", opaque)), rgb.float() / 255)
    clear = opaque.clone()
    clear[3, 2, 2] = 0
    write_rgba(tmp_path / "t.png", clear)
    with pytest.raises(ImageFileError, match=r"t\.png.*transparent"):
        load_image(tmp_path / "t.png")
    la16 = np.full((3, 3, 2), 65535, np.uint16)
    (tmp_path / "la16.png").write_bytes(png16(la16))
    assert load_image(tmp_path / "la16.png").shape == (3, 3, 3)
    # In a dataset the error names the file.
    deg, clean = make_folders(tmp_path / "ds", n=2, h=5, w=5)
    write_rgba(deg / "img1.png", clear)
    with pytest.raises(ValueError, match=r"img1\.png.*transparent"):
        PairedImageDataset((deg, clean), "folders")


# ------------------------------------------------------------------------------------------
# crops and augmentation
# ------------------------------------------------------------------------------------------


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(y, k, dims=(-2, -1)) for y in (x, x.flip(-1)) for k in range(4)]


def _is_window(window: torch.Tensor, image: torch.Tensor) -> bool:
    """Is ``window`` some flip/rot90 of a sub-window of ``image``?"""
    for cand in _dihedral(window):
        h, w = cand.shape[-2:]
        if h > image.shape[-2] or w > image.shape[-1]:
            continue
        patches = image.unfold(-2, h, 1).unfold(-2, w, 1)  # C, nH, nW, h, w
        if (patches == cand[:, None, None]).all(-1).all(-1).all(0).any():
            return True
    return False


def test_crop_flip_rot_identical_on_both_images(tmp_path: Path) -> None:
    deg_u8 = rand_u8(3, 20, 24, seed=7)
    deg, clean = tmp_path / "d", tmp_path / "c"
    write_png(deg / "a.png", deg_u8)
    write_png(clean / "a.png", 255 - deg_u8)  # clean = f(degraded), pointwise
    ds = PairedImageDataset((deg, clean), "folders", crop=10, augment=True)
    full = deg_u8.float() / 255
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        d, c, _ = ds[0]
        assert d.shape == c.shape == (3, 10, 10)
        torch.testing.assert_close(c, 1 - d, atol=1e-6, rtol=0)  # the same geometry on both
        assert _is_window(d, full)
        seen.add(tuple(d[:, 0, 0].tolist()))
    assert len(seen) > 10  # crops, flips and rotations vary


def test_rectangular_crop_keeps_shape_and_batches(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=4, h=20, w=24)
    ds = PairedImageDataset((deg, clean), "folders", crop=(6, 10), augment=True)
    torch.manual_seed(1)
    for i in range(len(ds)):
        d, c, _ = ds[i]
        assert d.shape == c.shape == (3, 6, 10)
    d, c, names = next(iter(DataLoader(ds, batch_size=4)))
    assert d.shape == (4, 3, 6, 10) and list(names) == ["img0", "img1", "img2", "img3"]


def test_evaluation_is_full_resolution_and_deterministic(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=1, h=20, w=24)
    ds = PairedImageDataset((deg, clean), "folders")
    assert ds.transform is None
    a, b = ds[0], ds[0]
    assert a[0].shape == (3, 20, 24)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[0], load_image(deg / "img0.png"))


def test_crop_larger_than_image_names_sizes(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=2, h=12, w=16)
    with pytest.raises(ValueError) as err:
        PairedImageDataset((deg, clean), "folders", crop=14)
    msg = str(err.value)
    assert "crop 14×14" in msg and "12×16" in msg and "img0" in msg


def test_cache_returns_same_items(tmp_path: Path) -> None:
    deg, clean = make_folders(tmp_path, n=2)
    ds = PairedImageDataset((deg, clean), "folders", cache=True)
    first = ds[1]
    (deg / "img1.png").unlink()  # served from memory now
    torch.testing.assert_close(ds[1][0], first[0])


# ------------------------------------------------------------------------------------------
# synthetic haze
# ------------------------------------------------------------------------------------------


def test_add_haze_matches_hand_computation() -> None:
    clean = torch.tensor([0.2, 0.5, 0.8]).view(3, 1, 1).expand(3, 1, 2).clone()
    depth = torch.tensor([[0.0, 0.5]])
    out = add_haze(clean, depth, beta=2.0, airlight=(0.9, 0.8, 0.7))
    t = math.exp(-2.0 * 0.5)
    for c, (j, a) in enumerate(zip([0.2, 0.5, 0.8], [0.9, 0.8, 0.7])):
        assert out[c, 0, 0].item() == pytest.approx(j)  # d = 0: t = 1, no haze
        assert out[c, 0, 1].item() == pytest.approx(j * t + a * (1 - t))
    assert transmission(torch.tensor(1.0), 1.5).item() == pytest.approx(math.exp(-1.5))


def test_add_haze_batched_parameters() -> None:
    clean = torch.rand(2, 3, 4, 5)
    depth = torch.rand(2, 4, 5)
    beta = torch.tensor([0.5, 2.0])
    airlight = torch.tensor([[1.0, 1.0, 1.0], [0.7, 0.8, 0.9]])
    out = add_haze(clean, depth, beta, airlight)
    for b in range(2):
        t = torch.exp(-beta[b] * depth[b])
        expected = clean[b] * t + airlight[b].view(3, 1, 1) * (1 - t)
        torch.testing.assert_close(out[b], expected)
    assert 0 <= out.min() and out.max() <= 1


def test_depth_from_disparity_fills_holes_and_inverts() -> None:
    disp = torch.tensor([[10.0, 20.0, float("nan")], [40.0, float("nan"), 5.0]])
    d = depth_from_disparity(disp)
    assert not d.isnan().any() and d.min() == 0 and d.max() == 1
    assert d[1, 2] == 1 and d[1, 0] == 0  # smallest disparity is farthest
    assert d[0, 0] > d[0, 1] > d[1, 0]
    assert d[0, 2] == d[0, 1]  # nearest valid neighbour


def test_depth_proxy_is_farther_at_the_top() -> None:
    d = depth_proxy(torch.full((3, 40, 30), 0.5))
    assert d.shape == (40, 30) and d.min() >= 0 and d.max() <= 1
    assert d[0].mean() == 1 and d[-1].mean() == 0


def test_synthetic_haze_is_reproducible() -> None:
    a = SyntheticHaze("train", crop=32, n=6, seed=3, max_size=128)
    b = SyntheticHaze("train", crop=32, n=6, seed=3, max_size=128)
    c = SyntheticHaze("train", crop=32, n=6, seed=4, max_size=128)
    for i in reversed(range(6)):  # order of access does not matter
        ha, ca, na = a[i]
        hb, cb, nb = b[i]
        assert na == nb
        torch.testing.assert_close(ha, hb)
        torch.testing.assert_close(ca, cb)
        assert ha.shape == ca.shape == (3, 32, 32)
        assert 0 <= ha.min() and ha.max() <= 1
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(6))
    p = a.params(2)
    assert 1.0 <= p.beta <= 2.5 and all(0 <= v <= 1 for v in p.airlight)
    assert p.airlight == b.params(2).airlight


def test_synthetic_haze_follows_the_model() -> None:
    ds = SyntheticHaze("train", crop=24, n=3, seed=0, max_size=96)
    for i in range(3):
        hazy, clean, _ = ds[i]
        p = ds.params(i)
        torch.testing.assert_close(hazy, add_haze(clean, ds.depth(i), p.beta, p.airlight))
        assert hazy.std() < clean.std()  # haze lowers contrast


def test_synthetic_haze_train_and_test_images_are_disjoint() -> None:
    train = SyntheticHaze("train", crop=16, n=40, seed=0, max_size=64)
    test = SyntheticHaze("test", max_size=64)
    assert set(train.image_names) == set(TRAIN_IMAGES)
    assert set(test.image_names) == set(TEST_IMAGES)
    assert not set(train.image_names) & set(test.image_names)
    assert {train.params(i).image for i in range(len(train))} <= set(TRAIN_IMAGES)
    assert len(test) == len(TEST_IMAGES)
    whole = {s.name: s.image for s in sample_images("test", max_size=64)}
    for i in range(len(test)):
        hazy, clean, name = test[i]
        torch.testing.assert_close(clean, whole[name])  # whole test image, not a crop
    # motorcycle_left uses its real disparity map.
    k = test.image_names.index("motorcycle_left")
    disp = next(s for s in sample_images("test", max_size=64) if s.name == "motorcycle_left").disparity
    torch.testing.assert_close(test.depth(k), depth_from_disparity(disp))


def test_synthetic_haze_crop_too_large() -> None:
    with pytest.raises(ValueError, match=r"crop 100×100 is larger than image"):
        SyntheticHaze("train", crop=100, max_size=64)


# ------------------------------------------------------------------------------------------
# files the loader will not use as given (issue 20, cases 5 and 6)
# ------------------------------------------------------------------------------------------


def test_an_animated_png_is_refused_not_reduced_to_its_first_frame(tmp_path: Path) -> None:
    from PIL import Image

    a = rand_u8(3, 12, 16).permute(1, 2, 0).numpy()
    frames = [Image.fromarray(a), Image.fromarray(255 - a)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageFileError, match=r"anim\.png: an animated PNG \(2 frames\)"):
        load_image(path)
    deg, clean = make_folders(tmp_path, n=1)
    (deg / "img0.png").write_bytes(path.read_bytes())
    for verify in ("header", "full"):
        with pytest.raises(ValueError, match=r"img0\.png: an animated"):
            PairedImageDataset((deg, clean), "folders", verify=verify)
    Image.fromarray(a).save(tmp_path / "still.png")  # one frame: fine
    assert load_image(tmp_path / "still.png").shape == (3, 12, 16)


def _jpeg_with_orientation(path: Path, upright: np.ndarray, orientation: int) -> None:
    """Store ``upright`` (H×W×3) the way a camera does: pixels turned, an EXIF tag to undo it."""
    from PIL import Image

    stored = {1: upright, 6: np.rot90(upright, 1), 8: np.rot90(upright, -1),
              3: np.rot90(upright, 2)}[orientation]  # 6: viewers turn 90° clockwise to show it
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif, quality=100, subsampling=0)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_as_viewers_do(tmp_path: Path, orientation: int) -> None:
    upright = np.zeros((16, 24, 3), np.uint8)
    upright[:4, :8] = 255  # a white block at the top left of the upright picture
    _jpeg_with_orientation(tmp_path / "cam.jpg", upright, orientation)
    img = load_image(tmp_path / "cam.jpg")
    assert img.shape == (3, 16, 24)
    assert float(img[:, :4, :8].mean()) > 0.9 and float(img[:, 4:, 8:].mean()) < 0.1


def test_a_rotated_square_photo_pairs_with_its_upright_partner(tmp_path: Path) -> None:
    """Square images used to pair silently misaligned (the sizes match either way)."""
    g = np.random.default_rng(0)
    upright = g.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    upright = np.kron(upright[::4, ::4], np.ones((4, 4, 1), np.uint8))  # blocky: JPEG keeps it
    deg, clean = tmp_path / "deg", tmp_path / "clean"
    deg.mkdir()
    clean.mkdir()
    _jpeg_with_orientation(deg / "a.jpg", upright, 6)
    write_png(clean / "a.png", torch.from_numpy(upright).permute(2, 0, 1).contiguous())
    rect = np.zeros((16, 24, 3), np.uint8)
    _jpeg_with_orientation(deg / "b.jpg", rect, 6)  # header check: stored 24×16, shown 16×24
    write_png(clean / "b.png", torch.from_numpy(rect).permute(2, 0, 1).contiguous())
    ds = PairedImageDataset((deg, clean), "folders", verify="header")
    d, c, name = ds[0]
    assert name == "a" and float((d - c).abs().mean()) < 0.03


def test_every_file_the_loader_will_not_use_is_reported(tmp_path: Path, caplog) -> None:
    import logging
    import os

    deg, clean = make_folders(tmp_path, n=2)
    (deg / "notes.txt").write_text("mine")
    (deg / "sub").mkdir()
    (deg / ".DS_Store").write_bytes(b"x")  # hidden: ignored
    with caplog.at_level(logging.WARNING, logger="diffloss.data"):
        PairedImageDataset((deg, clean), "folders")
    assert "2 entries that are not an image" in caplog.text and "notes.txt, sub/" in caplog.text
    assert ".DS_Store" not in caplog.text
    (clean / "img5.png").write_bytes(b"")
    os.symlink(tmp_path / "gone.png", clean / "img6.png")
    with pytest.raises(ImageFileError, match=r"1 broken link\(s\).*img6\.png; 1 empty file\(s\) "
                                             r"of 0 bytes.*img5\.png"):
        PairedImageDataset((deg, clean), "folders")
    # issue 44, case 13: problems in both folders are listed at once, not the first folder's only
    (deg / "img7.png").write_bytes(b"")
    with pytest.raises(ImageFileError) as both:
        PairedImageDataset((deg, clean), "folders")
    assert str(deg) in str(both.value) and "img7.png" in str(both.value)
    assert str(clean) in str(both.value) and "img6.png" in str(both.value)
    with pytest.raises(ImageFileError, match=r"x\.png: the file is empty \(0 bytes\)"):
        (tmp_path / "x.png").write_bytes(b"")
        load_image(tmp_path / "x.png")


def _png_header_only(path: Path, h: int, w: int) -> None:
    """A PNG whose header says H×W (and almost no pixel data): what a decompression bomb shows the
    loader first."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_an_image_over_the_pixel_limit_is_refused_naming_it(tmp_path: Path) -> None:
    """Issue 44, case 6: a 20000×20000 PNG (a megabyte on disk) in a layout is refused before any
    pixel is decoded, naming the file and the limit."""
    from diffloss.data.images import MAX_IMAGE_PIXELS

    deg, clean = make_folders(tmp_path, n=2)
    _png_header_only(deg / "img9.png", 20000, 20000)
    _png_header_only(clean / "img9.png", 20000, 20000)
    with pytest.raises(ValueError, match=r"img9\.png is 20000×20000 \(H×W\), 400 megapixels: over the "
                                         r"64-megapixel limit") as info:
        PairedImageDataset((deg, clean), "folders")
    assert 20000 * 20000 > MAX_IMAGE_PIXELS and str(deg / "img9.png") in str(info.value)
