"""Atomic writes: a file or folder appears whole under its name, or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pitguard.core.errors import PitguardError

_UMASK = os.umask(0)  # read once: os.umask can only be read by setting it
os.umask(_UMASK)


def temp_name(path: Path) -> Path:
    """The hidden sibling a write goes to before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it is renamed to ``path``.

    Works for a file or a whole folder; on failure the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    _remove(tmp)  # left by a killed process that had the same pid
    try:
        yield tmp
        if tmp.is_file():  # some writers (safetensors) create 0600 files: a service user must read
            os.chmod(tmp, 0o666 & ~_UMASK)
        fsync_tree(tmp)  # the data reaches the disk before the name points at it
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def replace_folder(new: Path, dest: Path) -> Path | None:
    """Put the folder ``new`` at ``dest`` in one step: the folder that was at ``dest`` is
    exchanged with it (Linux renameat2, RENAME_EXCHANGE), so ``dest`` holds the old folder or
    the new one at every instant, whatever signal or crash comes. Returns where the old folder
    now is (for the caller to remove), None where ``dest`` held nothing. Where the exchange is
    not supported, the old folder is moved aside and the new one renamed in with SIGINT and
    SIGTERM held, and the old one is put back if the second rename fails."""
    if not dest.exists():
        os.replace(new, dest)
        return None
    if _exchange(new, dest):
        return new
    old = dest.with_name(f".{dest.name}.replaced{os.getpid()}")
    with _signals_held():
        os.replace(dest, old)
        try:
            os.replace(new, dest)
        except BaseException:
            os.replace(old, dest)
            raise
    return old


def commit_together(folder: Path, folder_dest: Path, file_dest: Path, text: str) -> None:
    """Put the finished ``folder`` at ``folder_dest`` and ``text`` in ``file_dest`` as one
    change: everything is written and synced first, then the two renames run with SIGINT and
    SIGTERM held, so a signal leaves the old pair or the new pair, never one of each."""
    tmp = temp_name(file_dest)
    try:
        with naming_errors(file_dest):
            tmp.write_text(text)
            os.chmod(tmp, 0o666 & ~_UMASK)
            _fsync(tmp)
        fsync_tree(folder)
        with _signals_held():
            old = replace_folder(folder, folder_dest)
            try:
                os.replace(tmp, file_dest)
            except OSError:
                if old is not None:  # the old pair back together
                    replace_folder(old, folder_dest)
                    old = None
                raise
        _fsync(file_dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


@contextmanager
def _signals_held() -> Iterator[None]:
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def clear_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporaries a killed process left in ``folder`` (``.NAME.tmpPID`` whose
    process is gone); returns what was removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(".*.tmp*"):
        pid = path.name.rsplit(".tmp", 1)[1]
        if not pid.isdigit() or (int(pid) != os.getpid() and process_alive(int(pid))):
            continue
        _remove(path)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a file system that cannot open folders for reading: nothing more to do
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child)
    _fsync(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` and rename the result to ``path``; an error names ``path``."""
    with naming_errors(path), atomic_path(path) as tmp:
        write(tmp)


@contextmanager
def naming_errors(path: str | Path) -> Iterator[None]:
    """An OSError raised in the block without a file name (a full disk raises ENOSPC from a
    write, naming nothing) is raised again naming ``path``, so the message says what failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def check_output_path(
    out: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    forbidden_dirs: Iterable[tuple[str | Path, str]] = (),
    flag: str = "--out",
) -> Path:
    """Refuse, before any work, an output that would destroy what a command reads.

    ``out`` may not be any of ``inputs`` (symlinks and hard links followed) nor lie inside an
    input folder (the data a verb reads), nor be or lie inside a ``forbidden_dirs`` entry,
    given as ``(path, what it is)``: a bundle folder, a run's own files. Returns ``out``.
    """
    out = Path(out)
    target = _resolved(out)
    sources = [Path(given) for given in inputs]
    for given in sources:
        if target == _resolved(given) or _same_file(out, given):
            raise PitguardError(
                f"{flag} {out}: is also an input of this command ({given}); writing it would "
                f"destroy that input. Give {flag} a new path"
            )
    for folder, what in forbidden_dirs:
        if _resolved(Path(folder)) in (target, *target.parents):
            raise PitguardError(
                f"{flag} {out}: lies inside {what} ({folder}); writing there would damage it. "
                f"Give {flag} a path outside {folder}"
            )
    for given in sources:
        if given.is_dir() and _resolved(given) in target.parents:
            raise PitguardError(
                f"{flag} {out}: lies inside the data folder {given}, which this command reads; "
                f"writing there would change the data. Give {flag} a path outside {given}"
            )
    return out


def _resolved(path: Path) -> Path:
    """The absolute path with every symbolic link that exists followed."""
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link to an input is that input too
    except OSError:
        return False  # one of them does not exist (yet)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# Where a file's digest is remembered with the identity of the file it was read from
MEMO_ENV = "PITGUARD_CACHE"
MEMO_FILE = "sha256.json"
MEMO_ENTRIES = 512


def remembered_sha256(path: str | Path) -> str:
    """:func:`file_sha256`, remembered by the file's identity: device, inode, size and the
    modification and change times in nanoseconds. Any write to the file, a copy over it or a
    rename onto it changes the change time, which no user can set back, so a remembered digest
    is the one the bytes had; a start-up then hashes a large bundle once, not every time. The
    memo lives in $PITGUARD_CACHE (else $XDG_CACHE_HOME/pitguard, else ~/.cache/pitguard);
    where it cannot be read or written the file is simply hashed."""
    path = Path(path)
    st = path.stat()
    key = os.path.realpath(path)
    ident = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    memo_path = _memo_path()
    memo = _read_memo(memo_path)
    held = memo.get(key)
    if isinstance(held, list) and len(held) == 2 and held[0] == ident:
        return str(held[1])
    digest = file_sha256(path)
    if memo_path is not None:
        memo.pop(key, None)
        memo[key] = [ident, digest]
        while len(memo) > MEMO_ENTRIES:
            memo.pop(next(iter(memo)))
        with contextlib.suppress(OSError):  # a read-only home: right, only not remembered
            write_json(memo_path, memo)
    return digest


def _memo_path() -> Path | None:
    root = os.environ.get(MEMO_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pitguard"
    )
    return None if root.startswith("~") else Path(root) / MEMO_FILE


def _read_memo(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def json_text(obj: Any) -> str:
    """A JSON file's text as pitguard writes it."""
    return json.dumps(obj, indent=2) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when there is no such file.

    A file that exists but cannot be read or is not a JSON object is an error, never taken
    for a missing one (a damaged policy.json must not read as "not calibrated").
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise PitguardError(
            f"{path}: unreadable JSON ({exc}); rerun the step that wrote it"
        ) from exc
    if not isinstance(value, dict):
        raise PitguardError(f"{path}: not a JSON object; rerun the step that wrote it")
    return value


class Busy(PitguardError):
    """A lock another process holds."""


@contextmanager
def hold_lock(path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` for the block; a second holder is refused
    with who holds it (or, with ``wait``, waits its turn). The kernel frees the lock when its
    process ends, even by kill -9."""
    path = Path(path)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise Busy(
                f"{what} is in use by {holder}; wait for it to end or stop it, then run again"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
