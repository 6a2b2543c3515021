#!/usr/bin/env python
"""Download, verify and extract Dense-Haze (NTIRE 2019) into ``ROOT/dense_haze``.

    python data_scripts/download_dense_haze.py --root data/
    python data_scripts/download_dense_haze.py --root data/ --from-zip ~/Downloads/Dense_Haze_NTIRE19.zip

Result (the usual split: pairs 01-50 train, 51-55 test)::

    data/dense_haze/train/hazy/01_hazy.png ... 50_hazy.png     data/dense_haze/train/GT/01_GT.png ...
    data/dense_haze/test/hazy/51_hazy.png  ... 55_hazy.png     data/dense_haze/test/GT/51_GT.png ...

which ``diffloss.PairedImageDataset("data/dense_haze", "dense_haze", split)`` reads.

- The archive is fetched with a progress bar into ``ROOT/downloads/Dense_Haze_NTIRE19.zip.part``;
  an interrupted transfer resumes (HTTP Range), in this run and in the next one, and only a
  complete file is renamed to ``.zip``.
- The archive is verified: a readable zip, all 55 ``NN_hazy.png`` / ``NN_GT.png`` pairs present
  (the missing ones are listed), each member's CRC-32 checked while it is extracted. A
  *downloaded* archive that fails any of these checks is deleted, and the message says so, so
  the next run downloads it afresh instead of finding the same bad file again.
- Extraction goes to a temporary folder renamed into place at the end, so ``ROOT/dense_haze``
  is either complete or absent. A second run sees it and does nothing.
- Nothing the script did not create is deleted: ``ROOT/dense_haze`` is rebuilt only when it is
  absent, empty or the script's earlier output (its ``.diffloss-data.json`` lists every file in
  it); a ``--from-zip`` source inside ``ROOT/dense_haze`` is refused; an archive in
  ``ROOT/downloads`` that the script did not download is never deleted. Temporary folders left
  by a killed run are removed.
- Dead link? Download the archive by other means and pass ``--from-zip``.
- Errors are one line ``error: ...`` (exit status 1; Ctrl-C 130); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (  # noqa: E402
    ArchiveError,
    DownloadError,
    RefusedError,
    Source,
    add_debug_flag,
    atomic_dir,
    cli_main,
    log,
)

DENSE_HAZE_URL = "https://data.vision.ee.ethz.ch/cvl/ntire19/dense-haze/files/Dense_Haze_NTIRE19.zip"
ARCHIVE_NAME = "Dense_Haze_NTIRE19.zip"
N_PAIRS = 55
#: Pair numbers of the usual split.
TRAIN_IDS = tuple(range(1, 51))
TEST_IDS = tuple(range(51, 56))
KINDS = ("hazy", "GT")
_MEMBER = re.compile(r"^(\d{2})_(hazy|gt)\.png$", re.IGNORECASE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def split_of(pair_id: int) -> str:
    return "train" if pair_id in TRAIN_IDS else "test"


def expected_files() -> list[str]:
    """The 110 files of the prepared layout, relative to ``ROOT/dense_haze``."""
    return [
        f"{split_of(i)}/{kind}/{i:02d}_{kind}.png" for i in range(1, N_PAIRS + 1) for kind in KINDS
    ]


def missing_prepared(dest: Path) -> list[str]:
    """Files of the prepared layout absent from ``dest`` (all of them when ``dest`` is absent)."""
    return [rel for rel in expected_files() if not (dest / rel).is_file()]


def locate(source: Source) -> tuple[dict[tuple[int, str], str], list[str]]:
    """Find the 110 Dense-Haze files in ``source`` (a zip or a folder), wherever they sit.

    Returns ({(pair id, "hazy"|"GT"): member path}, [missing files as "hazy/NN_hazy.png"]).
    """
    found: dict[tuple[int, str], str] = {}
    for rel in source.files:
        match = _MEMBER.match(PurePosixPath(rel).name)
        if not match:
            continue
        pair_id = int(match.group(1))
        kind = "hazy" if match.group(2).lower() == "hazy" else "GT"
        if not 1 <= pair_id <= N_PAIRS:
            continue
        key = (pair_id, kind)
        if key in found:
            # Prefer the copy that sits in a folder named like its kind (hazy/, GT/).
            if PurePosixPath(rel).parent.name.lower() == kind.lower():
                found[key] = rel
            continue
        found[key] = rel
    missing = [
        f"{kind}/{i:02d}_{kind}.png"
        for i in range(1, N_PAIRS + 1)
        for kind in KINDS
        if (i, kind) not in found
    ]
    return found, missing


def extract(source: Source, found: dict[tuple[int, str], str], dest: Path) -> None:
    """Copy the located files into ``dest/{train,test}/{hazy,GT}`` atomically, checking CRCs
    (zip) and that each file is a PNG."""
    with atomic_dir(dest, sources=[source.path]) as tmp:
        for (pair_id, kind), rel in sorted(found.items()):
            target = tmp / split_of(pair_id) / kind / f"{pair_id:02d}_{kind}.png"
            source.copy(rel, target)
            with open(target, "rb") as f:
                if f.read(8) != _PNG_SIGNATURE:
                    raise ArchiveError(f"{source.path}: {rel!r} is not a PNG image.")


def _manual_hint(root: Path, url: str) -> str:
    return (
        f"Download {ARCHIVE_NAME} manually (from {url}, or the NTIRE 2019 Dense-Haze page / a "
        f"mirror) and run:\n  python data_scripts/download_dense_haze.py --root {root} "
        f"--from-zip PATH/TO/{ARCHIVE_NAME}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download, verify and extract Dense-Haze (NTIRE 2019) into ROOT/dense_haze.",
    )
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder (default: data)")
    parser.add_argument(
        "--from-zip",
        type=Path,
        metavar="PATH",
        help="use this Dense-Haze zip (or the folder it was extracted to) instead of downloading",
    )
    parser.add_argument("--url", default=DENSE_HAZE_URL, help="archive URL (default: the official one)")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts after an interruption")
    parser.add_argument("--retry-wait", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    parser.add_argument("--force", action="store_true", help="extract again even if already prepared")
    parser.add_argument(
        "--remove-archive", action="store_true", help="delete the downloaded zip after extraction"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    root: Path = args.root
    dest = root / "dense_haze"
    _common.sweep_stale(dest)
    missing = missing_prepared(dest)
    if not args.force and not missing:
        log(
            f"Dense-Haze is already prepared in {dest} ({len(TRAIN_IDS)} train + "
            f"{len(TEST_IDS)} test pairs); nothing to do (--force to extract again)."
        )
        return 0
    try:  # before any download: refuse what would delete files the script did not create
        _common.check_source_outside([args.from_zip] if args.from_zip is not None else [], dest)
        _common.check_replaceable(dest)
    except RefusedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.force and dest.exists():
        log(f"{dest} is incomplete ({len(missing)} files missing, e.g. {missing[0]}); rebuilding it.")

    hint = _manual_hint(root, args.url)
    downloaded = args.from_zip is None
    if downloaded:
        archive = root / "downloads" / ARCHIVE_NAME
        try:
            _common.download(
                args.url,
                archive,
                retries=args.retries,
                retry_wait=args.retry_wait,
                timeout=args.timeout,
                progress=not args.no_progress,
                hint=hint,
            )
        except DownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    else:
        archive = args.from_zip
        if not archive.exists():
            print(f"error: {archive} does not exist.", file=sys.stderr)
            return 1

    def corrupt(message: str) -> int:
        if downloaded and _common.remove_download(archive):
            message += (
                f"\nThe downloaded file was deleted: run again to download it afresh.\n{hint}"
            )
        elif downloaded:
            message += (
                f"\n{archive} was not downloaded by this script, so it is kept: delete or move "
                f"it and run again to download it afresh.\n{hint}"
            )
        print(f"error: {message}", file=sys.stderr)
        return 1

    try:
        source = Source(archive)
    except ArchiveError as exc:
        return corrupt(str(exc))
    problem = None
    with source:
        found, missing = locate(source)
        if not missing:
            log(f"Verified {archive}: {N_PAIRS} hazy/GT pairs. Extracting to {dest} ...")
            try:
                extract(source, found, dest)
            except RefusedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            except ArchiveError as exc:
                problem = str(exc)
    if missing:
        # A downloaded archive that lacks files is deleted (by corrupt()): kept, every rerun
        # would find it "already downloaded" and repeat this error.
        listing = "\n  ".join(missing)
        problem = (
            f"{archive} lacks {len(missing)} of the {2 * N_PAIRS} Dense-Haze files "
            f"(expected hazy/NN_hazy.png and GT/NN_GT.png for NN = 01..{N_PAIRS}):\n  {listing}"
        )
        if not downloaded:
            problem += "\nPass a complete Dense-Haze archive (or its extracted folder) with --from-zip."
    if problem is not None:
        return corrupt(problem)
    if downloaded and args.remove_archive:
        if _common.remove_download(archive):
            log(f"Removed {archive}.")
        else:
            log(f"Kept {archive}: this script did not download it (delete it yourself if you wish).")
    log(
        f"Dense-Haze ready in {dest}: train/ pairs {TRAIN_IDS[0]:02d}-{TRAIN_IDS[-1]:02d}, "
        f"test/ pairs {TEST_IDS[0]:02d}-{TEST_IDS[-1]:02d}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
