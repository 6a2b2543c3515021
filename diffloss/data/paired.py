"""Paired restoration data in folders: the layouts of the real datasets (Dense-Haze, LOL,
Rain13K/Rain100H) and of a user's own, checked at construction, with joint augmentation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .images import (
    _UNSUPPORTED_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ImageFileError,
    _decode_raw,
    _probe_size,
    _to_float,
)

_PROBLEM_LINES = 20
logger = logging.getLogger("diffloss.data")

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
    used = {p.name for p in images}  # a set: folders hold 13,712 files (Rain13K)
    unused = [p.name + ("/" if p.is_dir() else "") for p in entries
              if p.name not in used and not (p.is_symlink() and not p.exists())]
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
        listed: dict[str, list[Path]] = {}
        folder_problems: list[str] = []
        for side, folder in (("degraded", self.degraded_dir), ("clean", self.clean_dir)):
            try:  # both folders are read before any problem is raised: all of them at once
                listed[side] = _list_images(folder, layout)
            except ImageFileError as exc:
                folder_problems.append(str(exc))
        if folder_problems:
            raise ImageFileError("; and ".join(folder_problems))
        for side, suffix in (("degraded", deg_suffix), ("clean", clean_suffix)):
            keyed: dict[str, Path] = {}
            for path in listed[side]:
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
