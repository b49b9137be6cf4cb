"""Atomic file writes (write to a temporary name in the same folder, then rename) and file checksums.

A temporary file is named `.<target>.<pid>.<random><suffix>` (e.g. `.best.pt.4711.k2x9q0ab.pt`). A run
that is killed mid-write (kill -9, out of memory, a lost node) leaves it behind; the next atomic write
of the same target, and `clean_temporaries` of a whole folder, remove those whose process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segfold.errors import OutputError

# `.<target>.<pid>.<8 random chars><suffix>`; older versions wrote no pid (`.<target>.<random><suffix>`)
_TEMPORARY = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}(?P<suffix>\.[^./]*)?$")
# a temporary without a pid is left alone this long (its writer may still be running)
LEGACY_GRACE_SECONDS = 60.0


def ensure_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder `path` (and its parents); an OutputError when a file stands in the way."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise OutputError(f"{what} {path}: {part} is a file, not a folder; move it away or choose another "
                              "path (experiment.output_root / experiment.name, or the --out argument)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise OutputError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    return path


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_stale(path: Path, match: re.Match[str], now: float) -> bool:
    target_suffix = Path(match["target"]).suffix
    if (match["suffix"] or "") not in ("", target_suffix):
        return False  # not a name atomic_path gives (its suffix is the target's, unless asked otherwise)
    if match["pid"] is not None:
        return not _process_alive(int(match["pid"]))
    try:
        return now - path.stat().st_mtime > LEGACY_GRACE_SECONDS
    except FileNotFoundError:
        return False


def clean_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove the temporary files that interrupted atomic writes left in `folder`.

    Args:
        folder: the folder to clean (not its subfolders).
        target: only the temporaries of this file name; all of them when None.

    Returns:
        The files removed. A temporary whose process still runs on this machine is kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or (target is not None and match["target"] != target) or not path.is_file():
            continue
        if _is_stale(path, match, now):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    Args:
        path: the final file name.
        suffix: suffix of the temporary file (defaults to that of `path`, so writers that pick a
            format from the extension, like matplotlib or pandas, still work).

    Raises:
        OutputError: `path` is a folder, or a file stands where its folder should be.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name (e.g. {path / path.name}.csv) or remove the folder")
    ensure_dir(path.parent)
    clean_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.",
                               suffix=suffix if suffix is not None else path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # NOTE: mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
