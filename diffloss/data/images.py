"""Image files → float tensors: decoding (``torchvision.io``), the checks that come before it,
and the conversions that make every image RGB in [0, 1] (:func:`load_image`)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

#: File extensions that :func:`load_image` decodes (``torchvision.io.decode_image``).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
#: Image extensions found in the wild that ``torchvision.io`` cannot decode: reported, not skipped.
_UNSUPPORTED_EXTENSIONS: tuple[str, ...] = (".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".heic")


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
#: The largest image this package decodes, in pixels (64 megapixels, e.g. 8000×8000; Dense-Haze's
#: photos are 1.9): a guard against decompression bombs, a 1 MB PNG that holds 20000×20000 pixels
#: and gigabytes once decoded. Checked from the header, before any pixel data is read.
MAX_IMAGE_PIXELS = 64_000_000
_PNG_MAX_PIXELS = MAX_IMAGE_PIXELS
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
        raise ImageFileError(_too_many_pixels(path, height, width))
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
    if h * w > MAX_IMAGE_PIXELS:
        raise ImageFileError(_too_many_pixels(path, h, w))
    return h, w


def _too_many_pixels(path: Path, h: int, w: int) -> str:
    return (f"{path} is {h}×{w} (H×W), {h * w / 1e6:.0f} megapixels: over the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit of this loader (a guard against "
            "decompression bombs, diffloss.data.images.MAX_IMAGE_PIXELS); downscale it")
