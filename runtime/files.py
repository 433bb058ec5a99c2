"""Files that are whole or absent: digests, atomic writes and folder publishing, shared by every layer.

A writer never touches the final name until the content is complete: it writes a temporary file beside it and
renames it into place, so a reader (or a run killed mid-write) sees the old file or the new one, never half of
one. A disk that fills up or a folder that refuses writes is one line naming the folder and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from charlstm.errors import UserError

TMP_PREFIX = ".tmp-"  # temporary names start with this and carry the writer's pid: .tmp-NAME-PID-XXXX


class WriteError(UserError):
    """A file or folder could not be written (full disk, read-only folder, no permission)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_failure(path, e: OSError) -> WriteError:
    """One line for an OSError met while writing under `path`, naming the folder and the fix."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    fix = {errno.ENOSPC: "free some space there or write elsewhere",
           errno.EDQUOT: "free some space there or write elsewhere",
           errno.EROFS: "the file system is read-only: write elsewhere",
           errno.EACCES: "make it writable for this user or write elsewhere",
           errno.EPERM: "make it writable for this user or write elsewhere"}.get(e.errno, "check the folder")
    return WriteError(f"cannot write in {folder} ({e.strerror or e.__class__.__name__}): {fix}")


def ensure_space(path, needed: int) -> None:
    """Fail in one line, before writing, when the disk under `path` has less than `needed` bytes free. Some
    writers (HDF5 under h5py) do not fail cleanly on a full disk: they crash the process."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise WriteError(f"cannot write in {folder} (No space left on device: {free:,} bytes free, about "
                         f"{needed:,} needed): free some space there or write elsewhere")


def check_writable(folder) -> None:
    """Fail now, not after minutes of work, if `folder` (created if missing) cannot take a new file."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe-{os.getpid()}-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise write_failure(folder / "x", e) from None


def tmp_name(name: str) -> str:
    return f"{TMP_PREFIX}{name}-{os.getpid()}-"


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside `path` (same suffix, so Keras and h5py accept it); on success it is flushed
    to disk and renamed into place. On failure nothing is left and the old file, if any, is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=tmp_name(path.stem), suffix=suffix or "".join(path.suffixes),
                                   dir=path.parent)
        os.close(fd)
        os.unlink(tmp)  # some writers (h5py, zip) refuse an existing file
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder, name: str | None = None) -> list[Path]:
    """Remove temporary files and folders (`.tmp-NAME-PID-*`) that a killed writer left in `folder`: those whose
    pid is no longer running. A live writer's are left alone. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f"{TMP_PREFIX}{name + '-' if name else ''}*"):
        parts = p.name[len(TMP_PREFIX):].rsplit("-", 2)
        pid = int(parts[-2]) if len(parts) == 3 and parts[-2].isdigit() else None
        if pid is not None and (pid == os.getpid() or _alive(pid)):
            continue  # a live writer's, this process's included
        if pid is None and name is None:
            continue  # not one of ours
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def prepare_folder(out: Path, force: bool, what: str = "output folder", flag: str = "--out") -> None:
    """Before the work: refuse an existing folder without force, check the parent is writable, and remove
    what a killed writer of this folder left behind (temporary folders of processes that are gone)."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise WriteError(f"{what} {out} already exists: pass --force to replace it, or another {flag}", "out")
    parent = out.parent if str(out.parent) else Path(".")
    check_writable(parent)
    remove_stale_temps(parent, out.name)
    remove_stale_temps(parent, f"old-{out.name}")


def new_tmp_dir(out: Path) -> Path:
    """A fresh, world-readable temporary folder beside `out`, for a folder that is published whole."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_name(out.name), dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a published folder is as readable as any other
    except OSError as e:
        raise write_failure(out, e) from None
    return tmp


def publish_dir(tmp: Path, out: Path, force: bool, what: str = "output folder") -> None:
    """Rename the finished folder `tmp` to `out`. Without force an existing `out` is refused, also one that a
    concurrent writer published a moment ago (the rename itself refuses a non-empty target). With force the old
    `out` is moved aside first and removed only once the new one is in place."""
    old = None
    try:
        if out.exists() or out.is_symlink():
            if not force:
                raise WriteError(f"{what} {out} already exists: pass --force to replace it, or choose another")
            old = out.with_name(f"{TMP_PREFIX}old-{out.name}-{os.getpid()}-x")
            os.replace(out, old)
        try:
            os.rename(tmp, out)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise WriteError(f"{what} {out} was written by another process meanwhile: pass --force to "
                                 "replace it, or choose another") from None
            raise
    except OSError as e:
        if old is not None and not out.exists():
            os.replace(old, out)  # put the old folder back
            old = None
        raise write_failure(out, e) from None
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
