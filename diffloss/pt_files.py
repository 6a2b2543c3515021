"""What a ``.pt`` file that ``torch.load(weights_only=True)`` cannot read actually is.

Every loader of this package (training checkpoints, ``best.pt``, the ADM prior, the weights of
FFDNet and the classifier) reads with ``weights_only=True``: tensors and plain containers only,
never code. When that fails, torch's own message is several lines long, carries terminal escape
codes, and for an empty or a text file says only ``EOFError:`` or ``KeyError: 101``.
:func:`describe_unreadable` says instead, in one line, what the file is: empty, an image, text,
a whole pickled Python object (``torch.save(model)`` instead of ``torch.save(model.state_dict())``),
or a truncated or damaged file.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["describe_unreadable", "first_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
)


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """``exc``'s type and the first non-empty line of its message, without escape codes (at most
    ``limit`` characters of it, when given)."""
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def describe_unreadable(path: str | Path, exc: BaseException) -> str:
    """One phrase for why ``torch.load(path, weights_only=True)`` raised ``exc``: what the file
    is (``"is empty (0 bytes)"``, ``"is a PNG image, not a PyTorch file"``, ``"holds a pickled
    Python object (torch.nn.modules.linear.Linear) ..."``, ...), to follow the file's name."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"cannot be read ({first_line(err)})"
    if size == 0:
        return "is empty (0 bytes): it was never written, or its writing was cut off"
    for magic, kind in _IMAGE_MAGIC:
        if head.startswith(magic):
            return f"is {kind}, not a PyTorch file"
    found = _GLOBAL.search(_ANSI.sub("", str(exc)))
    if found:
        name = found.group(1)
        what = "a whole nn.Module, saved with torch.save(model)" if name.startswith("torch.nn.modules") \
            else f"an object of {name}"
        return (f"holds a pickled Python object ({what}), which is not loaded because unpickling it "
                "could run code; save the weights instead, torch.save(model.state_dict(), path)")
    if not head.startswith((b"PK\x03\x04", b"\x80")) and _looks_like_text(head):
        return "is a text file, not a PyTorch file"
    if head.startswith(b"PK\x03\x04"):
        return f"is a damaged or truncated PyTorch file ({first_line(exc)})"
    return f"is not a PyTorch file this package can read ({first_line(exc)})"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)
