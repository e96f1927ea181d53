"""Every write rankrm makes goes through here: a file or a directory appears whole, or not at all.

A file is written to a temporary name in its own directory, flushed and fsynced, then renamed over the target
(rename is atomic on POSIX). A directory is built under a temporary name and then swapped with the target in one
step (Linux renameat2 RENAME_EXCHANGE), so a reader sees the old directory or the new one, never a mix; where the
file system cannot exchange, the old directory is renamed aside first (a reader may then briefly find no
directory, but never a mixed one). Temporary names start with ".rankrm-tmp-" and carry the writer's PID, so a
later run can tell leftovers of a dead writer from the work of a live one (`leftovers`)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from pathlib import Path

from rankrm.errors import WriteError  # defined with the other errors a user can fix

TMP_PREFIX = ".rankrm-tmp-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _explain(e: OSError, path: Path) -> WriteError:
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOENT: "its directory does not exist",
    }.get(e.errno, e.strerror or type(e).__name__)
    fix = {errno.ENOENT: "create the directory or check the path"}.get(e.errno, "free space or choose another path")
    return WriteError(e.errno or 0, f"cannot write {path}: {what}. Fix: {fix}")


def as_write_error(e: Exception, path: Path) -> Exception:
    """An error met while writing path, as a WriteError naming it; libraries that write through their own I/O
    (safetensors' Rust writer) report a full disk as text, which is recognised too. Other errors pass unchanged."""
    if isinstance(e, WriteError):
        return e
    if not isinstance(e, OSError):
        if "No space left" not in str(e) and "StorageFull" not in str(e):
            return e
        e = OSError(errno.ENOSPC, str(e))
    return _explain(e, path)


def tmp_name(target: Path) -> Path:
    """A temporary sibling of target, named for this process."""
    return target.with_name(f"{TMP_PREFIX}{os.getpid()}-{target.name}")


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file for writing; on success it is fsynced and renamed to path, on failure removed."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WriteError(
            errno.ENOENT,
            f"cannot write {path}: its directory {path.parent} does not exist. Fix: create it or check the path",
        )
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:
        raise as_write_error(e, path) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_file(path) as f:
        f.write(text)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (before it is renamed into place)."""
    for d, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(d))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise _explain(OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())), b)


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished directory `new` at `target` as a whole, removing what was there before."""
    new, target = Path(new), Path(target)
    fsync_tree(new)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # `new` now holds the old directory
    else:
        old = target.with_name(f"{TMP_PREFIX}{os.getpid()}-old-{target.name}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    _fsync_dir(target.parent)


def umask() -> int:
    """This process's umask (read without changing it where /proc tells it; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_modes(root: Path) -> None:
    """Give every file and directory under root the mode open() and mkdir() give under the umask: libraries that
    write through a temporary file (transformers saves model.safetensors via mkstemp, mode 0600) would otherwise
    leave the team unable to read a model one of them saved."""
    mask = umask()
    for d, _, files in os.walk(root):
        os.chmod(d, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(d, name), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(target, keep: tuple[str, ...] = ()):
    """Build a directory under a temporary name and swap it in as a whole on success (removed on failure).

    keep: names of entries of the current target to carry into the new directory (hard links, no data copied),
    such as a training run's checkpoints next to its model."""
    target = Path(target)
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        umask_modes(tmp)
        for name in keep:
            src = target / name
            if (tmp / name).exists():
                continue
            if src.is_dir():
                shutil.copytree(src, tmp / name, copy_function=os.link, dirs_exist_ok=True)
            elif src.is_file():
                os.link(src, tmp / name)
        replace_dir(tmp, target)
    except Exception as e:
        raise as_write_error(e, target) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(directory: Path) -> list[Path]:
    """Temporary entries in directory left by writers that are no longer running."""
    out = []
    for p in Path(directory).glob(TMP_PREFIX + "*"):
        pid = p.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            out.append(p)
    return out


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the leftovers of dead writers in directory; returns what was removed."""
    found = leftovers(directory) if Path(directory).is_dir() else []
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return found
