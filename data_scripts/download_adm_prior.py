"""Download the DiffLoss prior ``256x256_diffusion_uncond.pt`` and convert it to diffusers.

The DiffLoss authors use OpenAI guided-diffusion's unconditional ImageNet 256x256 model
(Dhariwal & Nichol 2021) as their frozen prior. This script

1. downloads it from OpenAI's public release URL (``--url`` to override) into ``--out``:
   streamed into ``OUT.part`` with a progress bar, resumed with an HTTP ``Range`` request after an
   interruption (re-run the script, or it retries by itself), size-checked against the server's
   ``Content-Length``/``Content-Range`` and ``--expected-size``, and renamed to ``OUT`` only when
   complete (atomic ``os.replace``), so ``OUT`` is never a partial file;
2. converts it with :func:`diffloss.adm.convert_adm_checkpoint` into a diffusers folder
   (``--diffusers-dir``) that ``UNet2DModel.from_pretrained`` / ``DiffusionPrior.from_pretrained``
   load.

``--from-file PATH`` skips the download and converts a file you fetched yourself (browser,
``wget -c``, a mirror). The file is about 2.2 GB: 552,814,086 float32 parameters = 2,211,256,344
bytes of tensor data plus a small pickle header. OpenAI publishes no checksum or exact byte size;
pass ``--expected-size``/``--sha256`` to pin the one you trust. The converted folder records the
SHA-256 of the file it came from (``adm_flags.json``: ``source_sha256``), and the script prints it.
A downloaded file that fails its SHA-256 check, or that cannot be read as a checkpoint, is
deleted (or the message says to delete it), so a rerun downloads it afresh instead of failing
on the same bytes.

Nothing the script did not create is deleted: an existing ``--out`` that does not match
``--expected-size`` is not replaced (the message says to move it), ``--from-file``, ``--flags``
and ``--out`` may not lie inside ``--diffusers-dir`` (the folder a conversion replaces), and a
``--diffusers-dir`` that holds anything but a previous conversion is refused before the download.
Temporary folders a killed conversion left next to ``--diffusers-dir`` are removed. Errors are
one line ``error: ...`` (exit status 1, Ctrl-C 130); ``--debug`` shows the traceback.

Usage::

    python data_scripts/download_adm_prior.py                     # download + convert
    python data_scripts/download_adm_prior.py --from-file ~/Downloads/256x256_diffusion_uncond.pt
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RefusedError,
    add_debug_flag,
    check_source_outside,
    cli_main,
    sha256sum,
    sweep_stale,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
)
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "256x256_diffusion_uncond.pt"
DEFAULT_DIFFUSERS_DIR = REPO_ROOT / "checkpoints" / "adm-256x256-uncond-diffusers"
#: Lower bound for the real file: 552,814,086 float32 parameters (tests/fixtures shapes).
MIN_BYTES_256_UNCOND = 552_814_086 * 4

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(RuntimeError):
    """The transfer failed or produced a file of the wrong size."""


def _part_path(out: Path) -> Path:
    return out.with_name(out.name + ".part")


def _total_from_headers(status: int, headers, offset: int) -> int | None:
    """Full file size announced by the server (``None`` if it does not say)."""
    if status == 206:
        m = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
        if not m:
            raise DownloadError(
                f"server sent 206 without a usable Content-Range: {headers.get('Content-Range')!r}"
            )
        start = int(m.group(1))
        if start != offset:
            raise DownloadError(f"server resumed at byte {start}, asked for {offset}")
        return None if m.group(3) == "*" else int(m.group(3))
    length = headers.get("Content-Length")
    return int(length) if length is not None else None


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "diffloss-download/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _check_size(
    total: int | None, expected_size: int | None, min_size: int | None, url: str
) -> None:
    if total is not None and expected_size is not None and total != expected_size:
        raise DownloadError(
            f"size mismatch: {url} is {total:,} bytes but --expected-size is {expected_size:,}; "
            "the release changed or the URL is wrong (nothing was kept)"
        )
    if total is not None and min_size is not None and total < min_size:
        raise DownloadError(
            f"size mismatch: {url} is {total:,} bytes, smaller than the {min_size:,} bytes the "
            "checkpoint's tensors need (wrong file, or an error page)"
        )


def download(
    url: str,
    out: str | Path,
    *,
    expected_size: int | None = None,
    min_size: int | None = None,
    sha256: str | None = None,
    chunk_size: int = 1 << 20,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``out`` with resume, size check and an atomic rename.

    Bytes go to ``out + ".part"``; an existing part file is resumed with ``Range: bytes=N-``
    (a server answering 200 instead of 206 restarts the file). A dropped connection is retried
    up to ``retries`` times (waiting ``backoff * 2**k`` s), each resuming where it stopped.
    The size is checked against the server's announced length, ``expected_size`` and
    ``min_size`` (``DownloadError`` before any byte is written when the announced length
    already disagrees); ``sha256`` (hex) is checked on the complete file. Only then is the part
    file renamed to ``out``. An existing ``out`` of the expected size (any size if none is
    expected) is returned without downloading.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.is_dir():
        raise DownloadError(f"--out {out} is a folder: pass the path of the .pt file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file() and (expected_size is None or out.stat().st_size == expected_size):
        if sha256 is not None and (digest := sha256sum(out)) != sha256.lower():
            raise DownloadError(
                f"{out} exists but its SHA-256 is {digest}, not {sha256}: delete it (or pass "
                "another --out) and run again to download it afresh"
            )
        return out
    if out.exists() or out.is_symlink():  # never overwrite a file this call did not write
        what = (f"is {out.lstat().st_size:,} bytes, not the expected {expected_size:,}"
                if out.is_file() and expected_size is not None else "is not a regular file")
        raise DownloadError(
            f"{out} exists but {what}, so it is not replaced: delete or move it (or pass another "
            "--out) and run again to download it afresh"
        )
    part = _part_path(out)
    attempt = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        try:
            with _open(url, offset, timeout) as response:
                status = response.status
                if offset and status == 200:  # server ignored Range: start over
                    offset = 0
                total = _total_from_headers(status, response.headers, offset)
                _check_size(total, expected_size, min_size, url)
                mode = "ab" if offset else "wb"
                with (
                    open(part, mode) as fh,
                    tqdm(
                        total=total,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=out.name,
                        disable=not progress,
                    ) as bar,
                ):
                    while True:
                        chunk = response.read(chunk_size)
                        if not chunk:
                            break
                        fh.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # Range not satisfiable: the part may be complete
                m = _CONTENT_RANGE_UNSATISFIED.match(exc.headers.get("Content-Range", "") or "")
                if m and int(m.group(1)) == offset:
                    total = offset
                else:
                    part.unlink()  # part is larger than the file: corrupt, restart
                    attempt += 1
                    if attempt > retries:
                        raise DownloadError(
                            f"{url}: server rejected resuming at byte {offset}"
                        ) from exc
                    continue
            else:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (OSError, EOFError, http.client.HTTPException) as exc:  # dropped connection, timeout
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: transfer failed after {retries} retries ({exc}); "
                    f"{part} is kept, re-run to resume"
                ) from exc
            time.sleep(min(backoff * 2.0 ** (attempt - 1), 30.0))
            continue

        size = part.stat().st_size if part.is_file() else 0
        if total is not None and size < total:  # closed early without an exception
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: got {size:,} of {total:,} bytes after {retries} retries; "
                    f"{part} is kept, re-run to resume"
                )
            continue
        if total is not None and size > total:
            part.unlink()
            raise DownloadError(
                f"{url}: received {size:,} bytes, more than the announced {total:,}"
            )
        break

    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"size mismatch: downloaded {size:,} bytes, expected {expected_size:,}")
    if min_size is not None and size < min_size:
        part.unlink()
        raise DownloadError(
            f"size mismatch: downloaded {size:,} bytes, expected at least {min_size:,}"
        )
    if sha256 is not None:
        digest = sha256sum(part)
        if digest != sha256.lower():
            # Deleted: a kept .part would be "resumed" (as complete) and fail again on every run.
            part.unlink()
            raise DownloadError(
                f"sha256 mismatch for {url}: {digest} != {sha256}; the downloaded file was "
                "deleted, run again to download it afresh (if it repeats, the remote file is not "
                "the one this hash describes)"
            )
    os.replace(part, out)
    return out


def verify_file(
    path: str | Path,
    *,
    expected_size: int | None = None,
    min_size: int | None = None,
    sha256: str | None = None,
) -> Path:
    """Check a manually downloaded file; ``DownloadError`` says exactly what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{path} does not exist; download it from {DEFAULT_URL}")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(
            f"size mismatch: {path} is {size:,} bytes, expected {expected_size:,} (incomplete download?)"
        )
    if min_size is not None and size < min_size:
        raise DownloadError(
            f"size mismatch: {path} is {size:,} bytes, expected at least {min_size:,} (incomplete download?)"
        )
    if sha256 is not None and sha256sum(path) != sha256.lower():
        raise DownloadError(f"sha256 mismatch for {path}")
    return path


def check_paths(args: argparse.Namespace) -> None:
    """Refuse (:class:`RefusedError`) inputs or a download inside ``--diffusers-dir``, which the
    conversion replaces, and a ``--diffusers-dir`` that is not a previous conversion -- before
    anything is downloaded."""
    if args.no_convert:
        return
    inputs = [p for p in (args.from_file, args.flags) if p is not None]
    if args.from_file is None:
        inputs.append(args.out)
    check_source_outside(inputs, args.diffusers_dir, hint="or pass another --diffusers-dir")
    from diffloss.adm import _check_output_dir

    _check_output_dir(Path(args.diffusers_dir).expanduser().absolute())


def sweep_conversion_leftovers(diffusers_dir: Path) -> None:
    """Remove the temporary folders (``.NAME.tmp-*``, ``.NAME.old-PID``) that a killed conversion
    left next to ``diffusers_dir``: only those holding nothing but the files a conversion writes."""
    from diffloss.adm import CONVERSION_FILES

    sweep_stale(Path(diffusers_dir).expanduser().absolute(), only_files=CONVERSION_FILES)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="checkpoint URL (default: OpenAI's release)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT, help="where the .pt goes")
    parser.add_argument(
        "--from-file", type=Path, default=None, help="use this local .pt instead of downloading"
    )
    parser.add_argument(
        "--diffusers-dir",
        type=Path,
        default=DEFAULT_DIFFUSERS_DIR,
        help="diffusers folder to write (UNet2DModel + scheduler_config.json)",
    )
    parser.add_argument(
        "--flags",
        type=Path,
        default=None,
        help="JSON file of guided-diffusion flags (default: 256x256_diffusion_uncond.pt's)",
    )
    parser.add_argument(
        "--expected-size", type=int, default=None, help="exact byte size to require"
    )
    parser.add_argument("--sha256", default=None, help="hex SHA-256 to require")
    parser.add_argument("--no-convert", action="store_true", help="only download")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    # The size floor only applies to the paper's checkpoint (default flags).
    min_size = MIN_BYTES_256_UNCOND if args.flags is None else None
    try:
        check_paths(args)
        if args.from_file is not None:
            ckpt = verify_file(
                args.from_file,
                expected_size=args.expected_size,
                min_size=min_size,
                sha256=args.sha256,
            )
        else:
            ckpt = download(
                args.url,
                args.out,
                expected_size=args.expected_size,
                min_size=min_size,
                sha256=args.sha256,
                progress=not args.no_progress,
            )
        print(f"checkpoint: {ckpt} ({ckpt.stat().st_size:,} bytes)")
        if args.no_convert:
            return 0
        from diffloss.adm import ADM_256_UNCOND, convert_adm_checkpoint, read_adm_flags

        flags = ADM_256_UNCOND if args.flags is None else read_adm_flags(args.flags)
        sweep_conversion_leftovers(args.diffusers_dir)
        try:
            out = convert_adm_checkpoint(ckpt, args.diffusers_dir, flags)
        except ValueError as exc:
            if args.from_file is None and "not a readable PyTorch checkpoint" in str(exc):
                # Kept, the damaged file would be "already downloaded" on every rerun.
                raise ValueError(f"{exc}\nDelete {ckpt} and run again to download it afresh.") from None
            raise
        print(f"diffusers folder: {out}")
        # OpenAI publishes no checksum: the converter records the source's SHA-256.
        source_sha = json.loads((out / "adm_flags.json").read_text()).get("source_sha256")
        print(f"source SHA-256 (recorded in {out / 'adm_flags.json'}): {source_sha}")
    except (DownloadError, RefusedError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
