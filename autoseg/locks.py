"""One writer per folder: a fold being trained, a preprocessed configuration, an output folder.

A writer holds ``FOLDER/.autoseg.lock``: created with ``O_EXCL`` (so two writers cannot both create it),
holding who writes (command, host, pid, since when) as JSON, and ``flock``-ed for as long as the writer lives.
A second writer is refused with one line naming the holder (exit 2). The lock is removed on every way out
(``finally``: errors, Ctrl-C, SIGTERM); only a process killed outright (SIGKILL, a power cut) leaves it, and
then it is *stale*: its holder was on this host and is gone (the kernel dropped its ``flock``; its pid is no
longer running, or runs a process started after the lock was taken), so the next writer takes it over.
A lock of another host is never taken over (its process cannot be checked from here); the message says
which file to delete if that job is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from autoseg.errors import fail
from autoseg.io import make_folder

LOCK_NAME = ".autoseg.lock"
TRAINING = "training of this fold"
TRAINING_FIX = "train another fold or recipe"
UNREADABLE_GRACE_S = 60.0   # a lock file without its JSON (writer killed between create and write) is stale after


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: what it writes, its command, host and pid, and when it took the lock (Unix time)."""

    what: str
    command: str
    host: str
    pid: int
    since: float

    @classmethod
    def me(cls, what: str) -> LockHolder:
        return cls(what, Path(sys.argv[0]).name or "python", socket.gethostname(), os.getpid(), time.time())

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.what} ({self.command}, pid {self.pid} on host {self.host}, since {when})"


def lock_name(shard: tuple[int, int] = (0, 1)) -> str:
    """The lock of a job of a ``--shard i/n`` array is its own (the jobs write different cases of one folder)."""
    i, n = shard
    return LOCK_NAME if n == 1 else f"{LOCK_NAME}.shard-{i}-of-{n}"


@contextlib.contextmanager
def write_lock(folder: str | os.PathLike, what: str, fix: str, name: str = LOCK_NAME,
               enabled: bool = True) -> Iterator[Path]:
    """Hold ``folder/name`` while the block writes ``folder`` (created if needed; removed again on the way out
    if it was created here and is still empty). ``what`` names the work in the holder's line (``prediction``),
    ``fix`` is what a second writer is told to do besides waiting (``write elsewhere with -o``)."""
    folder = Path(folder)
    if not enabled:
        yield folder / name
        return
    created = not folder.is_dir()
    make_folder(folder)
    path = folder / name
    try:
        fd = _acquire(path, LockHolder.me(what), fix)
    except BaseException:
        _remove_if_empty(folder, created)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):   # (still ours: never remove another's)
                os.unlink(path)
        os.close(fd)
        _remove_if_empty(folder, created)


def read_holder(path: Path) -> LockHolder | None:
    """The holder written in a lock file; None when it is gone or unreadable."""
    try:
        return LockHolder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _acquire(path: Path, me: LockHolder, fix: str) -> int:
    """The open, flock-ed lock file, created or taken over from a dead holder; else a one-line error."""
    for _ in range(5):   # (the file may vanish or change between the steps below: look again)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = _take_over_if_stale(path, me)
            if fd is not None:
                return fd
            holder = read_holder(path)
            if holder is None and path.exists():   # (being written this instant?)
                time.sleep(0.1)
                holder = read_holder(path)
            if holder is None and path.exists():
                raise fail(path.parent, f"being written by another process (lock {path.name} without its holder)",
                           f"wait for it to finish, or {fix}; if no autoseg command writes here, delete {path}")
            if holder is not None:
                other = holder.host != me.host
                tail = f"; if that job is gone, delete {path}" if other else ""
                raise fail(path.parent, f"being written by another {holder.describe()}",
                           f"wait for it to finish, or {fix}{tail}")
            continue   # released meanwhile
        except OSError as e:
            raise fail(path, f"cannot create the lock file ({e.strerror or e})",
                       "check the folder's permissions and free disk space") from None
        try:   # (a process checking for staleness may hold the flock for a moment: wait for it)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            _write(fd, me)
        except BaseException as e:
            os.unlink(path)
            os.close(fd)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise fail(path.parent, "no space left on device (not even for the lock file)",
                           "free disk space and rerun") from None
            raise
        return fd
    raise fail(path, "the lock file keeps changing (several writers starting at once)", "rerun in a moment")


def _take_over_if_stale(path: Path, me: LockHolder) -> int | None:
    """The lock file, now ours, if its holder is gone; None if it is held (or vanished)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        held = not _flock(fd)
        holder = read_holder(path)
        if holder is None:
            stale = not held and time.time() - os.fstat(fd).st_mtime > UNREADABLE_GRACE_S
        else:
            stale = holder.host == me.host and not held and not _running(holder)
        if stale and os.path.samestat(os.fstat(fd), os.stat(path)):
            _write(fd, me)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _flock(fd: int) -> bool:
    """Take the kernel's lock on the open file; False if another process holds it. Where the file system has
    no flock, True (the pid check alone then decides whether a holder is alive)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return True
        raise


def _write(fd: int, me: LockHolder) -> None:
    """(No fsync: the holder's line is for people; the flock and O_EXCL are what lock.)"""
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)


def _running(holder: LockHolder) -> bool:
    """Whether the holder's process still runs on this host: its pid exists and was started before the lock."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass   # another user's process: it exists
    started = _start_time(holder.pid)
    return started is None or started <= holder.since + 1.0


def _start_time(pid: int) -> float | None:
    """Unix time process ``pid`` started (Linux /proc); None where unknown."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()
