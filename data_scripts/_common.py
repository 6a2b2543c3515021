"""Shared helpers of the data scripts: a resumable download, zip/folder sources, atomic publish.

- :func:`download` fetches a URL into ``dest`` through ``dest.part`` with a tqdm progress bar,
  resumes an interrupted transfer with an HTTP ``Range`` request (in the same run, and in a
  later run from the ``.part`` left behind), checks the size (and optionally SHA-256), and only
  then renames ``.part`` to ``dest`` (``os.replace``, atomic on one file system). A file at
  ``dest`` is therefore always complete.
- :class:`Source` lists and copies image files from a zip archive or a folder alike.
- :func:`atomic_dir` builds a folder under a temporary name and renames it into place at the
  end, so an interrupted preparation never leaves a half-filled dataset folder behind.
- The scripts never delete what they did not create: every folder :func:`atomic_dir` publishes
  carries a manifest (:data:`MANIFEST`, the list of its files), and a folder is replaced only
  when it is absent, empty, or such an output with no file added (:func:`check_replaceable`);
  a source that lies inside the folder to be replaced is refused (:func:`check_source_outside`).
  Temporary folders left by a killed run are swept (:func:`sweep_stale`), only those named by
  this module's pattern.
- :func:`cli_main` is the top-level handler of every script's ``main``: an exception becomes one
  line ``error: ...`` on stderr and exit status 1 (Ctrl-C: 130); ``--debug`` or
  ``DIFFLOSS_DEBUG=1`` shows the traceback instead.
- :func:`prepare_pairs` is the body of ``prepare_lol.py`` and ``prepare_rain.py``.

Standard library + tqdm only, so the scripts run before the package is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
USER_AGENT = "diffloss-data-scripts/0.1 (+https://github.com/diffloss-tutorial/diffloss)"
#: Names the data scripts in the records they leave (manifests, download records).
WRITER = "diffloss data_scripts"
#: The manifest in every folder :func:`atomic_dir` publishes: marks it as a data script's output
#: and lists its files. Only such a folder (with no file added) is ever replaced.
MANIFEST = ".diffloss-data.json"
#: A temporary folder with no process id in its name (older versions) is stale after this long.
STALE_AFTER_S = 3600.0


class DownloadError(RuntimeError):
    """A download that cannot complete (dead link, repeated interruptions, wrong size)."""


class ArchiveError(RuntimeError):
    """An archive or folder that is corrupt or lacks expected files."""


class RefusedError(RuntimeError):
    """An operation that would delete or overwrite files the script did not create."""


class _Interrupted(Exception):
    """A transfer that stopped early; retried with a Range request."""


def log(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Top-level error handler of the scripts
# ---------------------------------------------------------------------------------------------

_debug = {"on": False}


class _DebugAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False,
                         help="show the traceback of an unexpected error (or DIFFLOSS_DEBUG=1)")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True)
        _debug["on"] = True


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: :func:`cli_main` re-raises instead of printing one line."""
    parser.add_argument("--debug", action=_DebugAction)


def _debugging() -> bool:
    return _debug["on"] or os.environ.get("DIFFLOSS_DEBUG", "").strip().lower() in ("1", "true", "yes")


def describe(exc: BaseException) -> str:
    """One line: what went wrong and what to do."""
    debug = "run again with --debug (or DIFFLOSS_DEBUG=1) for the traceback"
    if isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        cause = f"{where}: {exc.strerror}" if where else exc.strerror
        return (f"{cause}. Check that path (a folder you can write to, with free space) and run "
                f"again; {debug}.")
    text = " ".join(str(exc).split())
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"unexpected error: {cause}. Check the paths and files you passed, or {debug} and report it."


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a script's ``main(argv=None) -> int``: an exception becomes one line
    ``error: ...`` on stderr and exit status 1, Ctrl-C status 130, never a traceback; with
    ``--debug`` (:func:`add_debug_flag`) or ``DIFFLOSS_DEBUG=1`` it is re-raised instead."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        _debug["on"] = False
        try:
            return main(argv)
        except KeyboardInterrupt:
            if _debugging():
                raise
            print("error: interrupted (Ctrl-C); nothing unfinished was put in place: run the "
                  "command again to finish (a download resumes where it stopped).",
                  file=sys.stderr, flush=True)
            return 130
        except Exception as exc:
            if _debugging():
                raise
            print(f"error: {describe(exc)}", file=sys.stderr, flush=True)
            return 1

    return wrapper


def human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def sha256sum(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def download(
    url: str,
    dest: str | Path,
    expected_size: int | None = None,
    *,
    sha256: str | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 16,
    progress: bool = True,
    hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming and verifying; returns ``dest``.

    - If ``dest`` exists (and has ``expected_size`` / ``sha256`` when given) nothing is fetched.
    - Bytes go to ``dest.part``; its URL and the server's ETag / Last-Modified go to
      ``dest.part.json``. A later call resumes from the ``.part`` with ``Range: bytes=N-``
      (and ``If-Range``, so a changed remote file restarts from zero). A server that ignores
      ``Range`` (200 instead of 206) restarts the file from zero.
    - A transfer cut short (fewer bytes than announced, reset, timeout, HTTP 5xx) is resumed
      up to ``retries`` times in this call, waiting ``retry_wait·attempt`` seconds.
    - Only a complete, verified ``.part`` is renamed to ``dest`` (``os.replace``).

    Raises :class:`DownloadError` with ``hint`` appended (e.g. how to download manually)
    for dead links (HTTP 4xx, unknown host) and when the retries run out; the ``.part`` is
    kept then, so the next call resumes.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    suffix = f"\n{hint}" if hint else ""
    if dest.exists():
        size = dest.stat().st_size
        if (expected_size is None or size == expected_size) and (sha256 is None or sha256sum(dest) == sha256):
            log(f"{dest} is already downloaded ({human(size)}).")
            return dest
        if not remove_download(dest):
            raise DownloadError(
                f"{dest} exists but does not match the expected size/checksum, and this script did "
                f"not download it, so it is not replaced: move it away (or delete it) and run again."
                f"{suffix}"
            )
        warn(f"{dest} exists but does not match the expected size/checksum; downloading again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = _read_meta(meta_path)
    if part.exists() and meta.get("url") != url:
        warn(f"discarding {part}: it was not downloaded from {url}.")
        part.unlink()
        meta = {}
    attempt = 0
    while True:
        try:
            total = _fetch(url, part, meta_path, meta, timeout, chunk_size, progress, suffix)
            break
        except _Interrupted as exc:
            meta = _read_meta(meta_path)
            have = part.stat().st_size if part.exists() else 0
            if attempt >= retries:
                raise DownloadError(
                    f"Download of {url} interrupted ({exc}) and {retries} retries used up. "
                    f"The partial file {part} ({human(have)}) is kept: run the command again "
                    f"to resume.{suffix}"
                ) from None
            attempt += 1
            log(f"Transfer interrupted ({exc}); resuming from byte {have} (retry {attempt}/{retries}).")
            time.sleep(retry_wait * attempt)
    size = part.stat().st_size
    if total is not None and size != total:  # pragma: no cover - _fetch guarantees it
        raise DownloadError(f"{part}: {size} bytes, expected {total}.{suffix}")
    if expected_size is not None and size != expected_size:
        part.unlink()
        meta_path.unlink(missing_ok=True)
        raise DownloadError(
            f"Downloaded {size} bytes from {url}, expected {expected_size}; the file was removed. "
            f"The remote file may have changed.{suffix}"
        )
    if sha256 is not None and (digest := sha256sum(part)) != sha256.lower():
        part.unlink()
        meta_path.unlink(missing_ok=True)
        raise DownloadError(
            f"Checksum mismatch for {url}: SHA-256 {digest}, expected {sha256}; the file was "
            f"removed.{suffix}"
        )
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    _download_record(dest).write_text(json.dumps({"written_by": WRITER, "url": url, "bytes": size}))
    log(f"Downloaded {dest} ({human(size)}).")
    return dest


def _download_record(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.download.json")


def downloaded_here(dest: str | Path) -> bool:
    """Whether the file ``dest`` is one :func:`download` fetched (its record next to it names
    this writer and the file's size), not one a user put there."""
    dest = Path(dest)
    record = _read_meta(_download_record(dest))
    try:
        return record.get("written_by") == WRITER and record.get("bytes") == dest.stat().st_size
    except OSError:
        return False


def remove_download(dest: str | Path) -> bool:
    """Delete ``dest`` (and its record) if :func:`download` fetched it; True when deleted. A file
    the scripts did not download is left alone (False)."""
    dest = Path(dest)
    if not downloaded_here(dest):
        return False
    dest.unlink(missing_ok=True)
    _download_record(dest).unlink(missing_ok=True)
    return True


def _read_meta(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes a-b/total`` or ``bytes */total`` -> (a, total); None where absent or ``*``."""
    if not value or not value.startswith("bytes "):
        return None, None
    spec, _, total = value[6:].partition("/")
    start = spec.split("-")[0]
    return (int(start) if start.strip().isdigit() else None, int(total) if total.strip().isdigit() else None)


def _fetch(
    url: str,
    part: Path,
    meta_path: Path,
    meta: dict,
    timeout: float,
    chunk_size: int,
    progress: bool,
    suffix: str,
) -> int | None:
    """One HTTP request appending to ``part``; returns the total size (None if unknown)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            _, total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:  # the .part was complete already
                return total
            part.unlink()
            raise _Interrupted("the server refused to resume; starting over") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(
            f"HTTP {exc.code} {exc.reason} for {url}: the link may be dead or moved.{suffix}"
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout, ConnectionResetError)):
            raise _Interrupted(str(exc.reason)) from None
        raise DownloadError(f"Cannot reach {url}: {exc.reason}.{suffix}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Interrupted(f"{type(exc).__name__}: {exc}") from None

    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start, total = _total_from_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Interrupted(f"the server resumed at byte {start}, not {offset}; starting over")
            mode = "ab"
        else:
            if offset:
                log(f"The server does not resume (HTTP {status}); downloading {part.name} from the start.")
            offset, total, mode = 0, length, "wb"
        meta = {
            "url": url,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "total": total,
        }
        meta_path.write_text(json.dumps(meta))
        bar = _progress(total, offset, part.name.removesuffix(".part"), progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(chunk_size)
                    except http.client.IncompleteRead as exc:
                        f.write(exc.partial)
                        raise _Interrupted("connection closed early") from None
                    except (TimeoutError, ConnectionError, OSError) as exc:
                        raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{url}: received {size} bytes, more than the announced {total}.{suffix}")
    return total


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the package
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Sources: a zip archive or a folder
# ---------------------------------------------------------------------------------------------


def _ignored(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


class Source:
    """Files of a zip archive or a folder, by POSIX path relative to its top.

    Opening a zip checks that it is one (the central directory is read); the CRC-32 of every
    member is checked when it is copied out (:meth:`copy`). Hidden files and ``__MACOSX``
    folders are ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise ArchiveError(f"{self.path} does not exist.")
        if self.path.is_dir():
            self.files = sorted(
                p.relative_to(self.path).as_posix()
                for p in self.path.rglob("*")
                if p.is_file() and not _ignored(p.relative_to(self.path).as_posix())
            )
            return
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise ArchiveError(_not_a_zip(self.path)) from None
        except OSError as exc:
            raise ArchiveError(f"{self.path}: cannot read it ({exc}).") from None
        self.files = sorted(
            info.filename for info in self._zip.infolist() if not info.is_dir() and not _ignored(info.filename)
        )

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    def copy(self, rel: str, target: Path, link: bool = False) -> None:
        """Copy file ``rel`` to ``target`` (zip: extracted with its CRC checked; folder: copied,
        or hard-linked when ``link`` and possible)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._zip is None:
            src = self.path / rel
            if link:
                with contextlib.suppress(OSError):
                    os.link(src, target)
                    return
            shutil.copyfile(src, target)
            return
        try:
            with self._zip.open(rel) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ArchiveError(
                f"{self.path} is corrupt: member {rel!r} cannot be extracted ({exc})."
            ) from None

    def read(self, rel: str) -> bytes:
        """The bytes of file ``rel`` (zip: CRC checked)."""
        if self._zip is None:
            return (self.path / rel).read_bytes()
        try:
            return self._zip.read(rel)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ArchiveError(
                f"{self.path} is corrupt: member {rel!r} cannot be extracted ({exc})."
            ) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_a_zip(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError:
        head = b""
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return (
            f"{path} is a web page, not a zip archive: the download link probably points to an "
            "error or login page now."
        )
    return f"{path} is not a valid zip archive (it is corrupt or truncated)."


# ---------------------------------------------------------------------------------------------
# Atomic folder publish
# ---------------------------------------------------------------------------------------------


def _inside(path: str | Path, folder: str | Path) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def check_source_outside(sources: Iterable[str | Path], final: str | Path,
                         hint: str = "or pass another --root") -> None:
    """Refuse (:class:`RefusedError`) a source that is ``final`` or lies inside it: replacing
    ``final`` would delete it."""
    final = Path(final)
    for source in sources:
        if _inside(source, final):
            where = "is" if Path(source).resolve() == final.resolve() else "lies inside"
            raise RefusedError(
                f"the source {source} {where} the destination {final}, which this script replaces, "
                f"so nothing was changed: move the source out of {final} (e.g. into "
                f"{final.parent / 'downloads'}) {hint}."
            )


def _tree(folder: Path) -> set[str]:
    """Every file, link or other non-folder entry under ``folder`` (POSIX paths relative to it),
    hidden ones included; linked folders are entries, not followed."""
    entries = set()
    for top, dirs, files in os.walk(folder, followlinks=False):
        base = Path(top)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            entries.add((base / name).relative_to(folder).as_posix())
    return entries


def _manifest_files(folder: Path) -> set[str] | None:
    """The files listed by ``folder``'s manifest, or None when it has none written by us."""
    data = _read_meta(folder / MANIFEST)
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("written_by") != WRITER or not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str)}


def replace_refusal(final: str | Path) -> str | None:
    """Why ``final`` must not be replaced, or None when it may be: it is absent, holds no file,
    or is a data script's earlier output (its manifest lists every file in it)."""
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return None
    if final.is_symlink() or not final.is_dir():
        return "is a file or a link, not a folder this script wrote"
    files = _tree(final)
    if not files:
        return None
    listed = _manifest_files(final)
    if listed is None:
        shown = ", ".join(sorted(files)[:3]) + (", ..." if len(files) > 3 else "")
        return f"holds files this script did not write ({shown}; no {MANIFEST})"
    extra = sorted(files - listed - {MANIFEST})
    if extra:
        shown = ", ".join(extra[:3]) + (f", ... ({len(extra)} in all)" if len(extra) > 3 else "")
        return f"holds files this script did not write ({shown})"
    return None


def check_replaceable(final: str | Path, hint: str = "or pass another --root") -> None:
    """Refuse (:class:`RefusedError`) to replace a folder that is not the scripts' own output."""
    reason = replace_refusal(final)
    if reason is not None:
        raise RefusedError(
            f"{final} {reason}, so it is not replaced and nothing was changed: move it away "
            f"(or delete it yourself) {hint}."
        )


def write_manifest(folder: Path) -> None:
    """Mark ``folder`` as a data script's output: :data:`MANIFEST` lists its files."""
    files = sorted(_tree(folder) - {MANIFEST})
    data = {"written_by": WRITER, "script": Path(sys.argv[0]).name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    (folder / MANIFEST).write_text(json.dumps(data, indent=0) + "\n")


#: Temporary folders this process is building now (never swept).
_ACTIVE: set[Path] = set()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: someone else's live process
        return True
    return True


def _newest_mtime(folder: Path) -> float:
    newest = folder.lstat().st_mtime
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, (Path(top) / name).lstat().st_mtime)
    return newest


def _temp_pattern(name: str) -> re.Pattern[str]:
    """``.NAME.tmp-PID-XXXXXXXX`` and ``.NAME.old-PID`` (this module), ``.NAME.tmp-XXXXXXXX``
    (older versions of it, and the prior's converter in diffloss.adm)."""
    return re.compile(rf"\.{re.escape(name)}\.(?:tmp-(?:(?P<tmp_pid>\d+)-)?[a-z0-9_]{{8}}|old-(?P<old_pid>\d+))")


def folder_mode() -> int:
    """The mode a new folder gets from the user's umask (``0o755`` under the usual ``022``):
    :func:`tempfile.mkdtemp` makes ``0o700``, which other users and a container's non-root user
    cannot read, so a published folder is given this mode instead."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def sweep_stale(final: str | Path, *, only_files: Collection[str] | None = None) -> list[Path]:
    """Delete the temporary folders an interrupted run left next to ``final`` and return them.

    Only folders named by :func:`atomic_dir`'s pattern are candidates: ``.NAME.tmp-PID-XXXXXXXX``
    and ``.NAME.old-PID`` whose process is gone (or is this process, not building it now), and
    ``.NAME.tmp-XXXXXXXX`` (no process id: older versions) untouched for :data:`STALE_AFTER_S`.
    With ``only_files``, a candidate is swept only if it holds nothing but plain files of those
    names. Anything else is left alone."""
    final = Path(final)
    pattern = _temp_pattern(final.name)
    swept = []
    try:
        siblings = sorted(final.parent.iterdir())
    except OSError:
        return swept
    for entry in siblings:
        match = pattern.fullmatch(entry.name)
        if match is None or entry in _ACTIVE or entry.is_symlink() or not entry.is_dir():
            continue
        pid = match["tmp_pid"] or match["old_pid"]
        if pid is not None and os.name != "nt":
            stale = int(pid) == os.getpid() or not _pid_alive(int(pid))
        else:
            stale = time.time() - _newest_mtime(entry) > STALE_AFTER_S
        if stale and only_files is not None:
            stale = all(p.name in only_files and p.is_file() and not p.is_symlink()
                        for p in entry.iterdir())
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            log(f"Removed {entry}: a temporary folder left by an interrupted run.")
            swept.append(entry)
    return swept


@contextlib.contextmanager
def atomic_dir(final: Path, *, sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success replace ``final`` with it.

    On an exception the temporary folder is deleted and ``final`` is left as it was, so a
    folder at ``final`` is always a finished one. The published folder carries a
    :data:`MANIFEST`. Refused (:class:`RefusedError`, nothing written) when one of ``sources``
    lies inside ``final`` or ``final`` is not replaceable (:func:`check_replaceable`, checked
    before the build and again before the swap). Stale temporary folders of ``final`` are swept
    first (:func:`sweep_stale`).
    """
    final = Path(final)
    sources = list(sources)
    check_source_outside(sources, final)
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, folder_mode())  # mkdtemp makes it 0700: give it a new folder's usual mode
    _ACTIVE.add(tmp)
    try:
        try:
            yield tmp
            write_manifest(tmp)
            check_replaceable(final)  # nothing of the user's was put there meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        _ACTIVE.discard(tmp)


# ---------------------------------------------------------------------------------------------
# Preparing paired datasets from a user's download (LOL, Rain13K/Rain100H)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subset:
    """One paired folder to produce: ``dest`` (relative to the dataset root) with the
    sub-folders ``pair``; found in a source as a folder named one of ``names`` (any case)
    that holds both sub-folders; ``expected`` pairs."""

    dest: str
    names: tuple[str, ...]
    pair: tuple[str, str]
    expected: int


#: Formats the trainer's decoder (torchvision.io) cannot read: converted to PNG while preparing.
CONVERT_TO_PNG = (".bmp", ".tif", ".tiff")
#: Pillow modes a PNG stores exactly (8-bit grey, grey + alpha, palette, RGB, RGBA; 16-bit grey).
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


def convert_to_png(data: bytes, name: str, target: Path) -> Path:
    """Write the BMP/TIFF image ``data`` (named ``name`` in messages) to ``target`` as a PNG,
    losslessly: the PNG is read back and its pixels compared with the source's. An image that
    a PNG cannot hold exactly (several frames or pages, CMYK, 16-bit colour, floating point)
    is an :class:`ArchiveError` that says how to convert it by hand."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise ArchiveError(f"{name}: holds {im.n_frames} images (pages or frames); "
                                   "save the one you mean as a PNG by hand.")
            im.load()
            if im.mode not in _PNG_MODES:
                raise ArchiveError(
                    f"{name}: pixel mode {im.mode} cannot be stored exactly in a PNG this "
                    "project reads; convert it to 8-bit RGB PNG by hand (e.g. with Pillow) and "
                    "pass the folder again.")
            pixels = im.tobytes()
            target.parent.mkdir(parents=True, exist_ok=True)
            im.save(target, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ArchiveError(f"{name}: cannot be read as an image ({exc}).") from None
    with Image.open(target) as back:
        if back.tobytes() != pixels:
            raise ArchiveError(f"{name}: the PNG written for it differs from the source; "
                               "convert it by hand.")
    return target


def _is_image(rel: str) -> bool:
    return PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS


def find_subset(source: Source, subset: Subset) -> tuple[str, dict[str, list[str]]] | None:
    """Find ``subset`` in ``source``: (folder prefix, {sub-folder: [image paths]}) or None.

    When several folders qualify, the one with the most images wins (and a warning names the
    others)."""
    names = {n.lower() for n in subset.names}
    wanted = {p.lower(): p for p in subset.pair}
    found: dict[str, dict[str, list[str]]] = {}
    for rel in source.files:
        if not _is_image(rel):
            continue
        parts = PurePosixPath(rel).parts
        if len(parts) < 3:
            continue
        folder, sub = parts[-3], parts[-2]
        if folder.lower() in names and sub.lower() in wanted:
            prefix = "/".join(parts[:-2])
            found.setdefault(prefix, {p: [] for p in subset.pair})[wanted[sub.lower()]].append(rel)
    complete = {k: v for k, v in found.items() if all(v[p] for p in subset.pair)}
    if not complete:
        return None
    best = max(complete, key=lambda k: sum(len(v) for v in complete[k].values()))
    others = sorted(set(complete) - {best})
    if others:
        warn(f"{subset.dest}: several candidate folders in {source.path}; using {best!r}, ignoring {others}.")
    return best, complete[best]


def _stem(rel: str) -> str:
    return PurePosixPath(rel).stem


def is_prepared(root: Path, subset: Subset) -> int:
    """Number of images in the first sub-folder if ``root/subset.dest`` is in place, else 0."""
    folder = root / subset.dest
    if not all((folder / p).is_dir() for p in subset.pair):
        return 0
    counts = [sum(1 for f in (folder / p).iterdir() if _is_image(f.name)) for p in subset.pair]
    return counts[0] if all(counts) else 0


def prepare_pairs(
    dataset: str,
    sources: Sequence[str | Path],
    root: Path,
    subsets: Sequence[Subset],
    *,
    force: bool = False,
    link: bool = False,
) -> int:
    """Normalise a user's download of ``dataset`` into ``root/<subset.dest>/<pair>``.

    Each subset is looked up in every source (zip or folder), its images are paired by file
    name without extension (unpaired files are listed and skipped), the pair count is compared
    with ``subset.expected`` (a warning with the found count when they differ), and the pairs
    are copied into a temporary folder renamed into place at the end (:func:`atomic_dir`).
    BMP and TIFF files, which the trainer cannot decode, are converted to PNG on the way,
    losslessly (:func:`convert_to_png`); one that cannot be leaves nothing in place.
    A subset already in place is left alone unless ``force``; one whose folder holds files the
    scripts did not write, or that a source lies inside, is refused before anything is written
    (nothing is deleted). Returns an exit status:
    0 when every subset is in place, 1 otherwise (with a message that says what is missing).
    """
    todo = []
    for subset in subsets:
        sweep_stale(root / subset.dest)
        have = is_prepared(root, subset)
        if have and not force:
            log(f"{dataset} {subset.dest}: already prepared in {root / subset.dest} ({have} pairs); nothing to do.")
        else:
            todo.append(subset)
    if not todo:
        return 0
    if not sources:
        print(
            f"error: {dataset}: {', '.join(s.dest for s in todo)} not prepared yet in {root}; "
            "pass --source with the archive(s) or folder(s) you downloaded.",
            file=sys.stderr,
        )
        return 1
    try:  # before anything is written: no subset half-done when another is refused
        for subset in todo:
            check_source_outside(sources, root / subset.dest)
            check_replaceable(root / subset.dest)
    except RefusedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    opened: list[Source] = []
    missing: list[Subset] = []
    try:
        for path in sources:
            try:
                opened.append(Source(path))
            except ArchiveError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        for subset in todo:
            hit = next(((s, f) for s in opened if (f := find_subset(s, subset)) is not None), None)
            if hit is None:
                missing.append(subset)
                continue
            source, (prefix, files) = hit
            a, b = subset.pair
            by_stem = {side: {_stem(r): r for r in files[side]} for side in subset.pair}
            common = sorted(set(by_stem[a]) & set(by_stem[b]))
            for side, other in ((a, b), (b, a)):
                lonely = sorted(set(by_stem[side]) - set(by_stem[other]))
                if lonely:
                    names = [PurePosixPath(by_stem[side][s]).name for s in lonely]
                    shown = ", ".join(names[:10]) + (f", ... and {len(names) - 10} more" if len(names) > 10 else "")
                    warn(f"{subset.dest}: {len(lonely)} file(s) in {prefix}/{side} have no partner in {prefix}/{other}; skipped: {shown}")
            if not common:
                missing.append(subset)
                continue
            if len(common) != subset.expected:
                warn(f"{dataset} {subset.dest}: found {len(common):,} pairs, expected {subset.expected:,}.")
            log(f"{dataset} {subset.dest}: {len(common):,} pairs from {source.path}:{prefix}")
            try:
                converted = 0
                with atomic_dir(root / subset.dest, sources=sources) as tmp:
                    for stem in common:
                        for side in subset.pair:
                            rel = by_stem[side][stem]
                            name = PurePosixPath(rel)
                            if name.suffix.lower() in CONVERT_TO_PNG:  # torchvision cannot read it
                                convert_to_png(source.read(rel), f"{source.path}:{rel}",
                                               tmp / side / (name.stem + ".png"))
                                converted += 1
                            else:
                                source.copy(rel, tmp / side / name.name, link=link)
                if converted:
                    log(f"  {converted:,} BMP/TIFF image(s) converted to PNG (lossless, checked)")
            except (ArchiveError, RefusedError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            log(f"  -> {root / subset.dest}")
    finally:
        for s in opened:
            s.close()
    if missing:
        lines = "\n".join(
            f"  {s.dest}: a folder named {' or '.join(s.names)} with sub-folders {s.pair[0]}/ and {s.pair[1]}/"
            for s in missing
        )
        print(
            f"error: {dataset}: not found in {', '.join(str(p) for p in sources)}:\n{lines}",
            file=sys.stderr,
        )
        return 1
    return 0


def prepare_cli(argv: Sequence[str] | None, *, name: str, folder: str, subsets: Sequence[Subset],
                description: str, source_help: str) -> int:
    """The command line shared by the prepare_* scripts: parse ``argv`` and run :func:`prepare_pairs`
    into ``ROOT/<folder>``. Returns the exit status (0 ok, 1 error)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder (default: data)")
    parser.add_argument("--source", type=Path, action="append", default=[], metavar="PATH", help=source_help)
    parser.add_argument("--force", action="store_true", help="prepare again even if present")
    parser.add_argument("--link", action="store_true", help="hard-link instead of copying (folder sources only)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return prepare_pairs(name, args.source, args.root / folder, subsets, force=args.force, link=args.link)
