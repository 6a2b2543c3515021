"""Images and paired restoration data.

This module starts with the offline default of DESIGN.md: natural colour images that ship
inside installed packages (scikit-image and matplotlib), so every chapter runs without a
download. Two scenes (:data:`TEST_IMAGES`) are held out whole, from the tiny diffusion prior and
the restorers: the out-of-distribution test split. Of the four training photos, the restorers
train on the left 75 % only; the right 22 % of each is the in-distribution test band
(:class:`SyntheticHaze` documents the geometry).
"""

from __future__ import annotations

import functools
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

#: Images used for training (the tiny prior's crops, the restorers' crops).
TRAIN_IMAGES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "grace_hopper")
#: Whole images held out for testing. ``motorcycle_left`` carries a real disparity map.
TEST_IMAGES: tuple[str, ...] = ("rocket", "motorcycle_left")
#: Columns of each training photo, as fractions of its width, from which the restorers'
#: training and validation crops are drawn (:class:`SyntheticHaze`).
TRAIN_REGION: tuple[float, float] = (0.0, 0.75)
#: Columns of each training photo, as fractions of its width, held out as the
#: in-distribution test band (``SyntheticHaze("id_test")``); 0.75–0.78 is a guard gap.
ID_TEST_BAND: tuple[float, float] = (0.78, 1.0)


def train_columns(width: int) -> tuple[int, int]:
    """Pixel columns ``[start, stop)`` of the training region of a ``width``-wide training photo:
    ``[0, ⌊0.75·width⌋)`` (:data:`TRAIN_REGION`)."""
    return math.ceil(TRAIN_REGION[0] * width), math.floor(TRAIN_REGION[1] * width)


def id_test_columns(width: int) -> tuple[int, int]:
    """Pixel columns ``[start, stop)`` of the in-distribution test band of a ``width``-wide
    training photo: ``[⌈0.78·width⌉, width)`` (:data:`ID_TEST_BAND`)."""
    return math.ceil(ID_TEST_BAND[0] * width), math.floor(ID_TEST_BAND[1] * width)


@dataclass(frozen=True)
class SampleImage:
    """One bundled image: ``image`` is a 3×H×W float tensor in [0, 1]."""

    name: str
    image: Tensor
    split: str
    #: Stereo disparity (H×W, pixels; larger is nearer; NaN where unknown), only for
    #: ``motorcycle_left``. Depth is proportional to 1/disparity.
    disparity: Tensor | None = None


def _skimage_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _image_path(name: str) -> Path:
    if name == "grace_hopper":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    folder = _skimage_dir()
    for ext in (".png", ".jpg"):
        path = folder / f"{name}{ext}"
        if path.exists():
            return path
    return folder / f"{name}.png"


def _read_rgb(path: Path) -> Tensor:
    if not path.exists():
        raise FileNotFoundError(
            f"Bundled sample image not found: {path}. It ships with scikit-image/matplotlib; "
            "reinstall them (pip install --force-reinstall scikit-image matplotlib)."
        )
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.RGB).float().div_(255.0)


def _read_disparity() -> Tensor:
    with np.load(_skimage_dir() / "motorcycle_disp.npz") as npz:
        disp = np.asarray(npz[npz.files[0]], dtype=np.float32)
    disp[~np.isfinite(disp)] = np.nan
    return torch.from_numpy(disp)


@functools.cache
def _load(name: str) -> SampleImage:
    image = _read_rgb(_image_path(name))
    disparity = _read_disparity() if name == "motorcycle_left" else None
    split = "train" if name in TRAIN_IMAGES else "test"
    return SampleImage(name=name, image=image, split=split, disparity=disparity)


def _resize_to(img: SampleImage, max_size: int) -> SampleImage:
    h, w = img.image.shape[-2:]
    scale = max_size / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = F.interpolate(img.image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    disparity = None
    if img.disparity is not None:
        # Nearest keeps NaN holes as holes; disparity (pixels) scales with the image.
        disparity = F.interpolate(img.disparity[None, None], size=size, mode="nearest")[0, 0] * scale
    return SampleImage(img.name, image.clamp_(0, 1), img.split, disparity)


def sample_images(split: str = "all", max_size: int | None = None) -> list[SampleImage]:
    """The bundled natural images as :class:`SampleImage` (3×H×W float tensors in [0, 1]).

    ``split``: ``"train"`` (:data:`TRAIN_IMAGES`), ``"test"`` (:data:`TEST_IMAGES`) or ``"all"``.
    ``max_size``: if given, images whose longer side exceeds it are downscaled (antialiased).
    """
    names = {"train": TRAIN_IMAGES, "test": TEST_IMAGES, "all": TRAIN_IMAGES + TEST_IMAGES}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    images = [_load(n) for n in names[split]]
    if max_size is not None:
        images = [_resize_to(img, max_size) for img in images]
    return images


def sample_image(name: str, max_size: int | None = None) -> Tensor:
    """One bundled image by name, as a 3×H×W float tensor in [0, 1]."""
    valid = TRAIN_IMAGES + TEST_IMAGES
    if name not in valid:
        raise ValueError(f"Unknown sample image {name!r}; available: {', '.join(valid)}")
    img = _load(name)
    return (_resize_to(img, max_size) if max_size else img).image


# ---------------------------------------------------------------------------------------------
# Image files -> float tensors
# ---------------------------------------------------------------------------------------------

#: File extensions that :func:`load_image` decodes (``torchvision.io.decode_image``).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
#: Image extensions found in the wild that ``torchvision.io`` cannot decode: reported, not skipped.
_UNSUPPORTED_EXTENSIONS: tuple[str, ...] = (".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".heic")
_PROBLEM_LINES = 20
logger = logging.getLogger("diffloss.data")


class ImageFileError(ValueError):
    """An image file that cannot be used as given (corrupt, unsupported, transparent, ...)."""


# Why PNGs are checked in Python before torchvision sees them: ``torchvision.io.decode_image``
# (checked with 0.29) hands PNGs to libpng, and on *any* error libpng reports (a CRC mismatch
# from one flipped byte, a broken deflate stream, a bad row filter, a wrong signature) the whole
# process dies with SIGSEGV, no exception, no file name. JPEG and WebP errors raise normally.
# Pillow would raise too, but it reads 16-bit RGB PNGs as 8-bit. So :func:`_check_png` verifies,
# in pure Python, everything libpng would reject, and only a sound file is decoded by
# torchvision. Its cost is one extra zlib inflate of the pixel data (CRC-32 runs at GB/s):
# about 20 ms, +40 % on the 47 ms decode of a 1600×1200 photograph, paid once per file and
# process: a file read again unchanged (same path, size and mtime) is not checked again.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (channels, allowed bit depths) (PNG specification, 11.2.2 IHDR).
_PNG_COLOR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)),
                    4: (2, (8, 16)), 6: (4, (8, 16))}
#: Adam7 interlace passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
#: libpng's default limit on width and height (PNG_USER_WIDTH_MAX, PNG_USER_HEIGHT_MAX).
_PNG_MAX_SIDE = 1_000_000
#: Largest PNG this loader decodes (pixels), against decompression bombs.
_PNG_MAX_PIXELS = 1 << 30
#: PNGs that passed :func:`_check_png` in this process: (path, size, mtime_ns) -> has tRNS.
_PNG_CHECKED: dict[tuple[str, int, int], bool] = {}


def _check_png(data: bytes, path: Path) -> bool:
    """Raise :class:`ImageFileError` naming ``path`` unless ``data`` is a sound PNG; return
    whether it holds a ``tRNS`` chunk (transparency without an alpha channel).

    Checked: the 8-byte signature; every chunk lies inside the file and its CRC-32 matches
    (``zlib.crc32``); IHDR first, with a size within libpng's limits (and at most
    :data:`_PNG_MAX_PIXELS` pixels) and a valid colour type / bit depth, compression, filter and
    interlace method; no unknown critical chunk; PLTE before the image data of a palette image;
    consecutive IDAT chunks; IEND. Then the IDAT stream is inflated in 4 MiB pieces (bounded
    memory): it must be a complete zlib stream (Adler-32 checked by zlib) with at least as many
    bytes as IHDR implies, and every row must start with a filter type 0–4.
    """

    def bad(why: str) -> ImageFileError:
        return ImageFileError(f"{path}: corrupt PNG ({why}); replace the file with a good copy")

    if data[:8] != _PNG_SIGNATURE:
        raise bad("broken signature")
    view, n, pos = memoryview(data), len(data), 8
    header: list[int] = []
    idat: list[memoryview] = []
    idat_done = has_plte = has_trns = palette_first = False
    while True:
        if pos + 12 > n:
            raise bad(f"the file ends at byte {n} without an IEND chunk: truncated")
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        name = kind.decode("latin-1")
        if not (kind.isascii() and kind.isalpha()):
            raise bad(f"no valid chunk at byte {pos}")
        end = pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > n:
            raise bad(f"chunk {name} at byte {pos} runs past the end of the file: truncated")
        body = view[pos + 8:end]
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(view[end:end + 4], "big"):
            raise bad(f"CRC-32 mismatch in chunk {name} at byte {pos}: damaged bytes")
        if not header and kind != b"IHDR":
            raise bad(f"the first chunk is {name}, not IHDR")
        if kind == b"IHDR":
            if header or length != 13:
                raise bad("invalid IHDR chunk")
            header = [int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"), *body[8:13]]
        elif kind == b"IDAT":
            if idat_done:
                raise bad("IDAT chunks are not consecutive")
            palette_first = palette_first or (not idat and has_plte)
            idat.append(body)
        elif kind == b"IEND":
            break
        else:
            idat_done = bool(idat)
            if kind == b"PLTE":
                has_plte = True
            elif kind == b"tRNS":
                has_trns = True
            elif kind == b"acTL" and length >= 4 and int.from_bytes(body[0:4], "big") > 1:
                raise ImageFileError(
                    f"{path}: an animated PNG ({int.from_bytes(body[0:4], 'big')} frames); only "
                    "its first frame would be read. Save the frame you mean as a still PNG.")
            elif kind[:1].isupper():  # a critical chunk this decoder does not know
                raise bad(f"unknown critical chunk {name}")
        pos = end + 4
    width, height, depth, color, compression, filter_method, interlace = header
    if not (1 <= width <= _PNG_MAX_SIDE and 1 <= height <= _PNG_MAX_SIDE):
        raise bad(f"invalid size {width}×{height}")
    if width * height > _PNG_MAX_PIXELS:
        raise ImageFileError(f"{path}: {width}×{height} pixels, more than this loader decodes "
                             f"({_PNG_MAX_PIXELS} pixels)")
    if color not in _PNG_COLOR_TYPES or depth not in _PNG_COLOR_TYPES[color][1]:
        raise bad(f"invalid colour type {color} with bit depth {depth}")
    if compression or filter_method or interlace not in (0, 1):
        raise bad("invalid compression, filter or interlace method")
    if color == 3 and not palette_first:
        raise bad("a palette image without a PLTE chunk before its image data")
    if not idat:
        raise bad("no image data (IDAT chunk)")
    # Offsets of the filter-type byte of every row (of every Adam7 pass when interlaced).
    channels = _PNG_COLOR_TYPES[color][0]
    starts, expected = [], 0
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            stride = 1 + (w * channels * depth + 7) // 8
            starts.append(expected + stride * np.arange(h, dtype=np.int64))
            expected += stride * h
    rows = np.concatenate(starts)
    inflater = zlib.decompressobj()
    pending: bytes = b"".join(idat)
    done = k = 0
    try:
        while not inflater.eof:
            piece = inflater.decompress(pending, 1 << 22)
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                break  # input exhausted before the end of the stream
            j = int(np.searchsorted(rows, done + len(piece)))
            if j > k and int(np.frombuffer(piece, np.uint8)[rows[k:j] - done].max()) > 4:
                raise bad("invalid row filter type: damaged image data")
            k, done = j, done + len(piece)
            if done > 2 * expected + (1 << 22):
                raise bad("far more image data than its size needs")
    except zlib.error as exc:
        raise bad(f"damaged compressed image data: {exc}") from None
    if done < expected or not inflater.eof:
        raise bad(f"the image data ends after {done} of {expected} bytes: truncated")
    return has_trns


def _decode_raw(path: Path) -> Tensor:
    """Decode ``path`` to an integer 3×H×W tensor (uint8, or uint16 for 16-bit PNGs).

    PNGs are checked by :func:`_check_png` first (a damaged PNG would crash torchvision).
    Conversions (documented in :func:`load_image`): grayscale and palette images become RGB,
    a fully opaque alpha channel (or ``tRNS`` transparency) is dropped, a transparent one is an
    error. The EXIF orientation (cameras store pixels as the sensor saw them, with a tag that
    says how to turn them upright) is applied, as image viewers do.
    """
    try:
        mtime = path.stat().st_mtime_ns
        raw = path.read_bytes()
        if not raw:
            raise ImageFileError(f"{path}: the file is empty (0 bytes); replace it with a good copy")
        has_trns = False
        if raw[:4] == _PNG_SIGNATURE[:4]:  # what torchvision takes for a PNG
            key = (str(path), len(raw), mtime)
            if key not in _PNG_CHECKED:
                _PNG_CHECKED[key] = _check_png(raw, path)
            has_trns = _PNG_CHECKED[key]
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        img = decode_image(data, mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
        if img.ndim != 3:
            raise ImageFileError(f"{path}: animated or multi-frame images are not supported")
        if has_trns and img.shape[0] in (1, 3):  # palette/grey/RGB transparency: make it alpha
            img = decode_image(data, mode=ImageReadMode.RGB_ALPHA, apply_exif_orientation=True)
        channels = img.shape[0]
        if channels in (2, 4):
            alpha = img[-1]
            full = 65535 if img.dtype == torch.uint16 else 255
            if bool((alpha.to(torch.int32) < full).any()):
                raise ImageFileError(
                    f"{path}: has an alpha channel with transparent pixels, whose colour is "
                    "undefined. Flatten it onto a background first (e.g. with Pillow: "
                    "Image.alpha_composite) and save it as RGB."
                )
        if channels in (1, 2):
            # Grayscale (or a palette PNG, which UNCHANGED returns as indices): let libpng expand.
            img = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        elif channels == 4:
            img = img[:3]
        elif channels != 3:
            raise ImageFileError(f"{path}: unexpected number of channels ({channels})")
    except ImageFileError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:
        raise ImageFileError(f"{path}: unreadable or corrupt image ({_short(exc)})") from exc
    return img


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # torchvision prefixes its C++ source location: keep the message itself.
    return text.rsplit(".cpp:", 1)[-1].split(", ", 1)[-1] if ".cpp:" in text else text


def _to_float(raw: Tensor) -> Tensor:
    if raw.is_floating_point():
        return raw
    full = 65535.0 if raw.dtype == torch.uint16 else 255.0
    return raw.to(torch.float32).div_(full)


def load_image(path: str | Path) -> Tensor:
    """Read an image file as a 3×H×W float tensor in [0, 1] (``torchvision.io.decode_image``).

    Formats: PNG, JPEG and WebP. Conversions, so that every image ends up as RGB in [0, 1]:

    - **8-bit** images are divided by 255; **16-bit** PNGs by 65535 (not 255: a 16-bit white
      is 65535), so both map full scale to 1.0 and keep their precision in float32.
    - **Grayscale** (and palette) images are expanded to RGB, ``R = G = B = Y``
      (palette entries are looked up).
    - An **alpha** channel that is fully opaque is dropped. Transparent pixels have no defined
      colour, so an image with any alpha below full scale raises :class:`ImageFileError`.
    - The **EXIF orientation** is applied (a photo stored sideways with Orientation = 6 is
      returned upright), as viewers show it. **Animated** images raise :class:`ImageFileError`.

    Raises :class:`ImageFileError` (a ``ValueError``) naming the file when it cannot be decoded.
    """
    return _to_float(_decode_raw(Path(path)))


def _probe_size(path: Path) -> tuple[int, int]:
    """(H, W) as :func:`load_image` returns it (EXIF orientation applied), from the file header
    only (Pillow reads no pixel data); raises ImageFileError (also for animated images)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt = im.format
            w, h = im.size
            animated = getattr(im, "n_frames", 1) > 1
            if fmt == "PNG":  # getexif() would decode the whole PNG to find a late eXIf
                exif = Image.Exif()
                if im.info.get("exif"):  # an eXIf chunk before the image data
                    exif.load(im.info["exif"])
            else:
                exif = im.getexif()
            if exif.get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: turned by 90°
                w, h = h, w
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageFileError(f"{path}: unreadable or corrupt image ({_short(exc)})") from exc
    if fmt not in ("PNG", "JPEG", "WEBP", "MPO"):
        raise ImageFileError(
            f"{path}: the file is {fmt}, which torchvision.io cannot decode; convert it to PNG"
        )
    if animated:
        raise ImageFileError(f"{path}: an animated image; only its first frame would be read. "
                             "Save the frame you mean as a still image.")
    return h, w


# ---------------------------------------------------------------------------------------------
# Paired datasets
# ---------------------------------------------------------------------------------------------

#: Expected layouts, shown in error messages.
LAYOUT_HELP: dict[str, str] = {
    "dense_haze": "root/{train,test}/hazy/NN_hazy.png and root/{train,test}/GT/NN_GT.png "
    "(data_scripts/download_dense_haze.py writes it)",
    "lol": "root/our485/{low,high}/*.png (train) and root/eval15/{low,high}/*.png (test) "
    "(data_scripts/prepare_lol.py writes it)",
    "rain": "root/train/Rain13K/{input,target}/* (train) and root/test/Rain100H/{input,target}/* "
    "(test) (data_scripts/prepare_rain.py writes it)",
    "folders": "root = {'degraded': DIR, 'clean': DIR} or (DEGRADED_DIR, CLEAN_DIR); "
    "images paired by file name without extension",
}
_PAIR_SUFFIX = {"dense_haze": ("_hazy", "_gt")}


def _layout_dirs(
    root: str | Path | dict | tuple | list, layout: str, split: str
) -> tuple[Path, Path]:
    if layout not in LAYOUT_HELP:
        raise ValueError(f"layout must be one of {sorted(LAYOUT_HELP)}, got {layout!r}")
    if layout == "folders":
        if isinstance(root, dict):
            missing = {"degraded", "clean"} - set(root)
            if missing:
                raise ValueError(f"layout='folders' needs keys 'degraded' and 'clean'; missing {sorted(missing)}")
            return Path(root["degraded"]), Path(root["clean"])
        if isinstance(root, (tuple, list)) and len(root) == 2:
            return Path(root[0]), Path(root[1])
        raise ValueError(f"layout='folders' expects {LAYOUT_HELP['folders']}; got {root!r}")
    if isinstance(root, (dict, tuple, list)):
        raise ValueError(f"layout={layout!r} expects a single root folder, got {root!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def dirs(base: Path) -> tuple[Path, Path]:
        if layout == "dense_haze":
            return base / split / "hazy", base / split / "GT"
        if layout == "lol":
            sub = base / ("our485" if split == "train" else "eval15")
            return sub / "low", sub / "high"
        sub = base / ("train/Rain13K" if split == "train" else "test/Rain100H")
        return sub / "input", sub / "target"

    root = Path(root)
    found = dirs(root)
    # The data scripts write ROOT/<layout>: accept the data folder itself too.
    if not found[0].is_dir() and dirs(root / layout)[0].is_dir():
        found = dirs(root / layout)
    return found


def _list_images(folder: Path, layout: str) -> list[Path]:
    """The images of ``folder``. Every entry the loader will not use is reported, never
    skipped silently: broken links, empty image files and formats torchvision cannot decode
    are errors (one message listing them all); other files and sub-folders are named in a
    warning. Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are ignored."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Folder not found: {folder}. Expected layout for {layout!r}: {LAYOUT_HELP[layout]}"
        )
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    problems = []
    dangling = [p.name for p in entries if p.is_symlink() and not p.exists()]
    if dangling:
        problems.append(f"{len(dangling)} broken link(s), whose target does not exist (restore "
                        f"or delete them): {_name_list(dangling)}")
    empty = [p.name for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.stat().st_size == 0]
    if empty:
        problems.append(f"{len(empty)} empty file(s) of 0 bytes (an interrupted copy? copy them "
                        f"again): {_name_list(empty)}")
    unsupported = [p.name for p in files if p.suffix.lower() in _UNSUPPORTED_EXTENSIONS]
    if unsupported:
        problems.append(f"{len(unsupported)} image(s) in a format torchvision.io cannot decode "
                        f"(convert them to PNG): {_name_list(unsupported)}")
    if problems:
        raise ImageFileError(f"{folder}: " + "; ".join(problems))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    unused = [p.name + ("/" if p.is_dir() else "") for p in entries
              if p not in images and not (p.is_symlink() and not p.exists())]
    if unused:
        logger.warning("%s: %d entr%s that %s not an image (%s) %s not used: %s", folder,
                       len(unused), "y" if len(unused) == 1 else "ies",
                       "is" if len(unused) == 1 else "are", ", ".join(IMAGE_EXTENSIONS),
                       "is" if len(unused) == 1 else "are", _name_list(unused))
    if not images:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}. "
            f"Expected layout for {layout!r}: {LAYOUT_HELP[layout]}"
        )
    return images


def _name_list(names: list[str], limit: int = _PROBLEM_LINES) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def _pair_key(path: Path, suffix: str | None) -> str:
    stem = path.stem
    if suffix and stem.lower().endswith(suffix):
        return stem[: -len(suffix)]
    return stem


def _problems(header: str, lines: list[str]) -> str:
    body = "\n  ".join(lines[:_PROBLEM_LINES])
    more = f"\n  ... and {len(lines) - _PROBLEM_LINES} more" if len(lines) > _PROBLEM_LINES else ""
    return f"{header}\n  {body}{more}"


def _as_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"crop must be positive, got {size!r}")
    return h, w


class RandomRot90(v2.Transform):
    """Rotate by ``k·90°`` with ``k`` drawn uniformly; a ``torchvision.transforms.v2`` transform.

    On square inputs ``k ∈ {0, 1, 2, 3}``; on non-square inputs only ``k ∈ {0, 2}``, so that
    every item keeps its H×W and batches still stack. Together with a horizontal flip this
    draws uniformly from the 8 symmetries of the square (4 of the rectangle).
    All inputs of one call get the same ``k`` (v2 draws parameters once per call).
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        if h == w:
            return {"k": int(torch.randint(4, ()).item())}
        return {"k": 2 * int(torch.randint(2, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0 or not isinstance(inpt, Tensor):
            return inpt
        out = torch.rot90(inpt.as_subclass(Tensor), params["k"], dims=(-2, -1))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    # torchvision < 0.21 calls the underscored names.
    _get_params = make_params
    _transform = transform


def paired_transform(crop: int | tuple[int, int] | None, augment: bool) -> Any | None:
    """The joint training transform: ``RandomCrop(crop)``, then (``augment``) a random horizontal
    flip and a random rotation by a multiple of 90° (:class:`RandomRot90`).

    Call it once with both images wrapped as ``tv_tensors.Image``: ``torchvision.transforms.v2``
    draws the random parameters once per call, so the crop window, flip and rotation are
    identical for the degraded and the clean image. Returns ``None`` when there is nothing to do.
    """
    ops: list[Any] = []
    hw = _as_hw(crop)
    if hw is not None:
        ops.append(v2.RandomCrop(hw))
    if augment:
        ops += [v2.RandomHorizontalFlip(p=0.5), RandomRot90()]
    return v2.Compose(ops) if ops else None


class PairedImageDataset(Dataset):
    """Pairs ``(degraded, clean, name)`` of 3×H×W float tensors in [0, 1] from a folder layout.

    Layouts (``layout``; see :data:`LAYOUT_HELP`):

    - ``"dense_haze"``: ``root/{train,test}/hazy/NN_hazy.png`` ↔ ``root/{train,test}/GT/NN_GT.png``
      (as written by ``data_scripts/download_dense_haze.py``; ``name`` is ``"NN"``);
    - ``"lol"``: ``root/our485/{low,high}`` (``split="train"``), ``root/eval15/{low,high}`` (test);
    - ``"rain"``: ``root/train/Rain13K/{input,target}``, ``root/test/Rain100H/{input,target}``;
    - ``"folders"``: ``root`` is ``{"degraded": DIR, "clean": DIR}`` or ``(DEGRADED, CLEAN)``;
      ``split`` is ignored.

    For the first three, ``root`` may also be the data folder that the data scripts fill
    (``data/`` instead of ``data/dense_haze``): ``root/<layout>`` is used when ``root`` itself
    does not hold the layout.

    Images are paired by file name without extension. Everything is checked when the dataset
    is built, and all problems are reported at once, naming the files: unmatched files, two
    files with one name, unreadable or corrupt images, unsupported formats, size mismatch
    within a pair, and a crop larger than an image. Pixel conversions (grayscale → RGB,
    16-bit → float, opaque alpha dropped, transparent alpha an error) are those of
    :func:`load_image`.

    ``verify``: ``"full"`` decodes every image once at construction (catches truncated files
    too); ``"header"`` reads only the headers (sizes, formats; fast on 10 000+ pairs), so a
    truncated file is reported when the item is loaded; ``"auto"`` is ``"full"`` up to 100
    pairs (Dense-Haze, LOL eval15) and ``"header"`` above.

    Training (``crop`` and/or ``augment``): one random crop, horizontal flip and rotation by a
    multiple of 90° applied *identically* to both images (:func:`paired_transform`, one
    ``torchvision.transforms.v2`` call on two ``tv_tensors.Image``). Randomness comes from
    torch's global generator (seed it, or let ``DataLoader`` seed its workers).
    Evaluation (``crop=None, augment=False``) returns the full-resolution pair.

    ``cache=True`` keeps the decoded images in memory as integers (1 byte per value for
    8-bit files: ~5.8 MB per 1600×1200 image).
    """

    def __init__(
        self,
        root: str | Path | dict | tuple | list,
        layout: str = "dense_haze",
        split: str = "train",
        crop: int | tuple[int, int] | None = None,
        augment: bool = False,
        *,
        verify: str = "auto",
        cache: bool = False,
    ) -> None:
        if verify not in ("auto", "full", "header"):
            raise ValueError(f"verify must be 'auto', 'full' or 'header', got {verify!r}")
        self.layout, self.split = layout, split
        self.degraded_dir, self.clean_dir = _layout_dirs(root, layout, split)
        self.crop = _as_hw(crop)
        self.augment = augment
        self.pairs = self._pair(layout)
        self._cache: dict[int, tuple[Tensor, Tensor]] | None = {} if cache else None
        full = verify == "full" or (verify == "auto" and len(self.pairs) <= 100)
        self.sizes = self._check(full)
        self.transform = paired_transform(self.crop, augment)

    # -- construction checks -----------------------------------------------------------------

    def _pair(self, layout: str) -> list[tuple[str, Path, Path]]:
        deg_suffix, clean_suffix = _PAIR_SUFFIX.get(layout, (None, None))
        sides = {}
        duplicates: list[str] = []
        for side, folder, suffix in (
            ("degraded", self.degraded_dir, deg_suffix),
            ("clean", self.clean_dir, clean_suffix),
        ):
            keyed: dict[str, Path] = {}
            for path in _list_images(folder, layout):
                key = _pair_key(path, suffix)
                if key in keyed:
                    duplicates.append(f"{keyed[key]} and {path} (both pair as {key!r})")
                keyed[key] = path
            sides[side] = keyed
        if duplicates:
            raise ValueError(_problems("Two files with the same name in one folder:", duplicates))
        deg, clean = sides["degraded"], sides["clean"]
        only_deg = sorted(set(deg) - set(clean))
        only_clean = sorted(set(clean) - set(deg))
        if only_deg or only_clean:
            lines = []
            if only_deg:
                lines.append(
                    f"{len(only_deg)} degraded image(s) in {self.degraded_dir} without a clean "
                    f"partner in {self.clean_dir}: {_name_list([deg[k].name for k in only_deg])}"
                )
            if only_clean:
                lines.append(
                    f"{len(only_clean)} clean image(s) in {self.clean_dir} without a degraded "
                    f"partner in {self.degraded_dir}: {_name_list([clean[k].name for k in only_clean])}"
                )
            hint = ""
            if layout == "dense_haze":
                hint = "\n(Dense-Haze pairs NN_hazy.png with NN_GT.png.)"
            raise ValueError(_problems("Unmatched files:", lines) + hint)
        return [(k, deg[k], clean[k]) for k in sorted(deg)]

    def _check(self, full: bool) -> list[tuple[int, int]]:
        problems: list[str] = []
        sizes: list[tuple[int, int]] = []
        for i, (name, dpath, cpath) in enumerate(self.pairs):
            hw = []
            raws = []
            for path in (dpath, cpath):
                try:
                    if full:
                        raw = _decode_raw(path)
                        raws.append(raw)
                        hw.append((int(raw.shape[-2]), int(raw.shape[-1])))
                    else:
                        hw.append(_probe_size(path))
                except ImageFileError as exc:
                    problems.append(str(exc))
            if len(hw) != 2:
                sizes.append((0, 0))
                continue
            if hw[0] != hw[1]:
                problems.append(
                    f"size mismatch in pair {name!r}: {dpath} is {hw[0][0]}×{hw[0][1]} but "
                    f"{cpath} is {hw[1][0]}×{hw[1][1]} (H×W)"
                )
            elif self.crop is not None and (hw[0][0] < self.crop[0] or hw[0][1] < self.crop[1]):
                problems.append(
                    f"crop {self.crop[0]}×{self.crop[1]} is larger than pair {name!r} "
                    f"({hw[0][0]}×{hw[0][1]}, H×W): {dpath}"
                )
            if self._cache is not None and len(raws) == 2:
                self._cache[i] = (raws[0], raws[1])
            sizes.append(hw[0])
        if problems:
            raise ValueError(
                _problems(
                    f"{len(problems)} problem(s) in the {self.layout!r} dataset "
                    f"({self.degraded_dir} ↔ {self.clean_dir}):",
                    problems,
                )
            )
        return sizes

    # -- access ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.pairs]

    def _raw_pair(self, index: int) -> tuple[Tensor, Tensor]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        name, dpath, cpath = self.pairs[index]
        deg, clean = _decode_raw(dpath), _decode_raw(cpath)
        if deg.shape != clean.shape:
            raise ImageFileError(
                f"size mismatch in pair {name!r}: {dpath} is {tuple(deg.shape[1:])} but "
                f"{cpath} is {tuple(clean.shape[1:])}"
            )
        if self._cache is not None:
            self._cache[index] = (deg, clean)
        return deg, clean

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        name = self.pairs[index][0]
        deg, clean = self._raw_pair(index)
        if self.transform is not None:
            h, w = deg.shape[-2:]
            if self.crop is not None and (h < self.crop[0] or w < self.crop[1]):
                raise ValueError(
                    f"crop {self.crop[0]}×{self.crop[1]} is larger than pair {name!r} ({h}×{w}, H×W)"
                )
            # Crop/flip/rotate the 8-bit integers (cheaper than full-size floats); torch has
            # few uint16 kernels, so 16-bit images are converted to float first.
            if deg.dtype == torch.uint16 or clean.dtype == torch.uint16:
                deg, clean = _to_float(deg), _to_float(clean)
            deg, clean = self.transform(tv_tensors.Image(deg), tv_tensors.Image(clean))
            deg, clean = deg.as_subclass(Tensor), clean.as_subclass(Tensor)
        return _to_float(deg).contiguous(), _to_float(clean).contiguous(), name

    def __repr__(self) -> str:
        return (
            f"PairedImageDataset(layout={self.layout!r}, split={self.split!r}, pairs={len(self)}, "
            f"degraded={str(self.degraded_dir)!r}, clean={str(self.clean_dir)!r}, "
            f"crop={self.crop}, augment={self.augment})"
        )


# ---------------------------------------------------------------------------------------------
# Synthetic haze on the bundled images
# ---------------------------------------------------------------------------------------------


def transmission(depth: Tensor, beta: float | Tensor) -> Tensor:
    """Transmission ``t = exp(−β·d)`` of the atmospheric scattering model (Koschmieder's law).

    ``depth``: ``d``, a normalised depth (…×H×W, any shape); ``beta``: the scattering
    coefficient ``β`` (a number, or a tensor that broadcasts against ``depth``).
    """
    beta = torch.as_tensor(beta, dtype=depth.dtype, device=depth.device)
    return torch.exp(-beta * depth)


def add_haze(
    clean: Tensor,
    depth: Tensor,
    beta: float | Tensor,
    airlight: float | tuple[float, float, float] | Tensor,
) -> Tensor:
    """Haze a clean image with the atmospheric scattering model (Koschmieder; McCartney 1976):

    ``I = J·t + A·(1 − t)``,  ``t = exp(−β·d)``

    ``clean`` = ``J``: 3×H×W or B×3×H×W in [0, 1]. ``depth`` = ``d``: H×W, 1×H×W, B×H×W or
    B×1×H×W, a normalised depth (0 near, 1 far). ``beta`` = ``β`` ≥ 0: a number, or a tensor
    of shape (B,) for one value per image. ``airlight`` = ``A``, the colour of the haze: a
    number (grey), 3 numbers (RGB), or a tensor of shape (3,) or (B, 3).

    ``I`` is a convex combination of ``J`` and ``A`` (``0 < t ≤ 1``), so it stays in [0, 1]
    when both are. Returns ``I`` with the shape of ``clean``.
    """
    if clean.dim() not in (3, 4) or clean.shape[-3] != 3:
        raise ValueError(f"clean must be 3×H×W or B×3×H×W, got {tuple(clean.shape)}")
    batched = clean.dim() == 4
    d = depth.to(clean.dtype)
    if d.dim() == clean.dim() - 1:  # no channel axis: H×W or B×H×W
        d = d.unsqueeze(-3)
    if d.shape[-2:] != clean.shape[-2:]:
        raise ValueError(f"depth {tuple(depth.shape)} does not match image {tuple(clean.shape)}")
    b = torch.as_tensor(beta, dtype=clean.dtype, device=clean.device)
    if b.dim() == 1:  # one β per image
        if not batched:
            raise ValueError("a per-image beta needs a batched B×3×H×W image")
        b = b.view(-1, 1, 1, 1)
    a = torch.as_tensor(airlight, dtype=clean.dtype, device=clean.device)
    if a.dim() >= 1:  # (3,) or (B, 3)
        if a.shape[-1] != 3:
            raise ValueError(f"airlight must be a number, 3 values or B×3, got {tuple(a.shape)}")
        a = a[..., :, None, None]
    t = transmission(d, b)
    return clean * t + a * (1 - t)


def _normalise(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Min-max rescale to [0, 1]; a (nearly) constant map, range < ``eps``, becomes 0."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi - lo > eps else torch.zeros_like(x)


def depth_from_disparity(disparity: Tensor) -> Tensor:
    """Normalised depth in [0, 1] from a stereo disparity map (H×W, NaN where unknown).

    Depth is inversely proportional to disparity, ``Z = f·B / disparity``, so ``d ∝ 1/disp``.
    Holes (NaN or ≤ 0) take the value of the nearest valid pixel (Euclidean distance
    transform), then ``d`` is min-max normalised to [0, 1] (0 nearest, 1 farthest).
    """
    disp = disparity.detach().cpu().to(torch.float64).numpy()
    valid = np.isfinite(disp) & (disp > 0)
    if not valid.any():
        raise ValueError("the disparity map has no valid pixel")
    if not valid.all():
        from scipy import ndimage

        _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
        disp = disp[iy, ix]
    return _normalise(torch.from_numpy(1.0 / disp).float())


def depth_proxy(image: Tensor, ramp_weight: float = 0.7) -> Tensor:
    """A plausible normalised depth (H×W in [0, 1]) for an image without a depth map.

    A proxy, not a measurement: ``d = normalise(w·r + (1 − w)·Ŷ)`` with

    - ``r(y) = 1 − y/(H − 1)``, a vertical ramp: the top of a photo (sky, background) is
      usually farther than the bottom (the ground at the camera's feet);
    - ``Ŷ``, the Rec. 601 luminance ``0.299R + 0.587G + 0.114B`` low-passed at about 1/16 of
      the image size and min-max normalised: large bright regions (sky, walls behind the
      subject) count as farther, a cue in the spirit of the dark-channel prior;
    - ``w = ramp_weight`` (0.7), and ``normalise`` the min-max rescale to [0, 1].

    The result is smooth, so the haze varies slowly across objects; edges of the haze do not
    follow object boundaries as they would with true depth.
    """
    h, w = image.shape[-2:]
    lum = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None, None]
    small = (max(1, round(h * 32 / max(h, w))), max(1, round(w * 32 / max(h, w))))
    low = F.interpolate(lum, size=small, mode="area")
    low = F.avg_pool2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    low = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    ramp = torch.linspace(1.0, 0.0, h).view(h, 1).expand(h, w)
    return _normalise(ramp_weight * ramp + (1 - ramp_weight) * _normalise(low))


def depth_map(sample: SampleImage) -> Tensor:
    """Normalised depth (H×W in [0, 1]) of a bundled image: :func:`depth_from_disparity` when it
    has a disparity map (``motorcycle_left``), else :func:`depth_proxy`."""
    if sample.disparity is not None:
        return depth_from_disparity(sample.disparity)
    return depth_proxy(sample.image)


@dataclass(frozen=True)
class HazeParams:
    """How item ``index`` of a :class:`SyntheticHaze` was made."""

    index: int
    image: str
    beta: float
    airlight: tuple[float, float, float]
    #: Crop window in the (possibly downscaled) source image: top, left, height, width.
    box: tuple[int, int, int, int]
    flipped: bool


#: The splits of :class:`SyntheticHaze`; ``"ood_test"`` is another name for ``"test"``.
SPLITS: tuple[str, ...] = ("train", "id_test", "test", "ood_test")
_SPLIT_CODE = {"train": 0, "test": 1, "id_test": 2}  # keys of the per-item random generator
#: Haze draws per band in the default ``id_test`` split (items = draws × training photos).
ID_TEST_DRAWS = 3


class SyntheticHaze(Dataset):
    """Hazy/clean pairs ``(hazy, clean, name)`` made from the bundled sample images.

    Haze follows the atmospheric scattering model, ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``
    (:func:`add_haze`), with ``d`` from :func:`depth_map`: the real disparity of
    ``motorcycle_left`` (``d ∝ 1/disparity``), the documented :func:`depth_proxy` for the
    others. Per item, ``β ~ U(beta_range)`` and a grey level ``a ~ U(airlight_range)`` are
    drawn, and ``A = clip(a·(1 + τ), 0, 1)`` with a per-channel tint ``τ ~ U(−tint, tint)³``.
    The defaults (``β ∈ [1, 2.5]``, ``a ∈ [0.7, 1]``) give dense haze: ``t`` falls to
    0.08–0.37 at the farthest point, as in Dense-Haze.

    Split geometry. Each of the four :data:`TRAIN_IMAGES` (after ``max_size``, width ``W``) is cut
    into vertical bands, full height::

        columns  [0, ⌊0.75·W⌋)          training region: every training and validation crop
                 [⌊0.75·W⌋, ⌈0.78·W⌉)   guard gap, never used
                 [⌈0.78·W⌉, W)           in-distribution test band (the right ~22 %)

    (:data:`TRAIN_REGION`, :data:`ID_TEST_BAND`, :func:`train_columns`, :func:`id_test_columns`).
    The gap, 3 % of the width, is wider than the reach of the antialiasing kernel of the
    downscaling (one pixel of the downscaled image on each side of a pixel centre) whenever the
    downscaled widths are 34 px or more, so no source pixel feeds both a training crop and a
    test band, even when training and evaluation downscale to different sizes
    (``tests/test_splits.py`` checks this in the original photos' coordinates). The two :data:`TEST_IMAGES` are never used at
    all except by the out-of-distribution split.

    - ``split="train"``: ``n`` (default 256) random ``crop`` windows (with a random horizontal
      flip) inside the training region of the training photos. The trainer's validation split,
      which selects ``best.pt``, is this split with another ``seed`` (its own windows and haze).
    - ``split="id_test"`` (**in-distribution** test): the whole test band of each training photo,
      hazed afresh, ``ID_TEST_DRAWS`` (3) draws per band by default: item ``i`` is the band of
      photo ``i mod 4`` with draw ``i div 4`` (``n`` sets the number of items; ``crop`` is ignored).
    - ``split="test"`` or ``"ood_test"`` (**out-of-distribution** test): the whole
      :data:`TEST_IMAGES`, one item per image by default (``n`` > 2 cycles through them with new
      haze draws; ``crop`` is ignored).

    ``max_size`` downscales the source images first (longer side). Reproducible: item ``i`` is
    a pure function of ``(seed, split, i)`` (``numpy.random.default_rng((seed, split, i))``),
    whatever the order of access or the number of workers; see :meth:`params`.
    """

    def __init__(
        self,
        split: str = "train",
        crop: int | tuple[int, int] | None = 128,
        n: int | None = None,
        seed: int = 0,
        beta_range: tuple[float, float] = (1.0, 2.5),
        airlight_range: tuple[float, float] = (0.7, 1.0),
        max_size: int | None = None,
        *,
        tint: float = 0.05,
        flip: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        split = "test" if split == "ood_test" else split
        if not 0 <= beta_range[0] <= beta_range[1]:
            raise ValueError(f"beta_range must be 0 ≤ low ≤ high, got {beta_range}")
        if not 0 <= airlight_range[0] <= airlight_range[1] <= 1:
            raise ValueError(f"airlight_range must lie in [0, 1], got {airlight_range}")
        self.split, self.seed = split, int(seed)
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.airlight_range = (float(airlight_range[0]), float(airlight_range[1]))
        self.tint, self.flip = float(tint), bool(flip) and split == "train"
        self.crop = _as_hw(crop) if split == "train" else None
        self.samples = sample_images("test" if split == "test" else "train", max_size)
        self.depths = [depth_map(s) for s in self.samples]
        default_n = {"train": 256, "id_test": ID_TEST_DRAWS * len(self.samples)}
        self.n = int(n) if n is not None else default_n.get(split, len(self.samples))
        if self.crop is not None:
            for s in self.samples:
                h, w = s.image.shape[-2:]
                lo, hi = train_columns(w)
                if h < self.crop[0] or hi - lo < self.crop[1]:
                    raise ValueError(
                        f"crop {self.crop[0]}×{self.crop[1]} is larger than image {s.name!r} "
                        f"({h}×{w}, H×W, max_size={max_size}; training region {h}×{hi - lo})"
                    )

    @property
    def image_names(self) -> list[str]:
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return self.n

    def params(self, index: int) -> HazeParams:
        """The random choices of item ``index`` (a pure function of ``seed``, split, index)."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        rng = np.random.default_rng((self.seed, _SPLIT_CODE[self.split], index))
        if self.split == "train":
            k = int(rng.integers(len(self.samples)))
        else:
            k = index % len(self.samples)
        h, w = self.samples[k].image.shape[-2:]
        if self.split == "train":
            lo, hi = train_columns(w)
            ch, cw = self.crop if self.crop is not None else (h, hi - lo)
            top = int(rng.integers(h - ch + 1))
            left = lo + int(rng.integers(hi - lo - cw + 1))
        elif self.split == "id_test":
            lo, hi = id_test_columns(w)
            top, left, ch, cw = 0, lo, h, hi - lo
        else:
            top, left, ch, cw = 0, 0, h, w
        flipped = bool(rng.random() < 0.5) and self.flip
        beta = float(rng.uniform(*self.beta_range))
        grey = rng.uniform(*self.airlight_range)
        tint = rng.uniform(-self.tint, self.tint, size=3)
        airlight = tuple(float(v) for v in np.clip(grey * (1 + tint), 0.0, 1.0))
        return HazeParams(index, self.samples[k].name, beta, airlight, (top, left, ch, cw), flipped)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        if index < 0:
            index += self.n
        p = self.params(index)
        k = self.image_names.index(p.image)
        top, left, ch, cw = p.box
        clean = self.samples[k].image[:, top : top + ch, left : left + cw]
        depth = self.depths[k][top : top + ch, left : left + cw]
        if p.flipped:
            clean, depth = clean.flip(-1), depth.flip(-1)
        hazy = add_haze(clean, depth, p.beta, p.airlight).clamp_(0, 1)
        if self.split == "train":
            name = f"{p.image}_{index:05d}"
        elif self.split == "id_test":
            name = f"{p.image}_band{index // len(self.samples)}"
        else:
            name = f"{p.image}_{index:05d}" if self.n > len(self.samples) else p.image
        return hazy.contiguous(), clean.contiguous(), name

    def depth(self, index: int) -> Tensor:
        """The depth map ``d`` (H×W) used for item ``index`` (cropped and flipped like it)."""
        p = self.params(index)
        top, left, ch, cw = p.box
        d = self.depths[self.image_names.index(p.image)][top : top + ch, left : left + cw]
        return d.flip(-1) if p.flipped else d

    def __repr__(self) -> str:
        return (
            f"SyntheticHaze(split={self.split!r}, n={self.n}, crop={self.crop}, seed={self.seed}, "
            f"images={self.image_names})"
        )
