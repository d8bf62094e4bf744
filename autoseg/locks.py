"""One writer per folder: a fold being trained, a preprocessed configuration, an output folder.

A writer holds ``FOLDER/.autoseg.lock``: created with ``O_EXCL`` (so two writers cannot both create it),
holding who writes (command, host, pid, since when) as JSON, and ``flock``-ed for as long as the writer lives.
A second writer is refused with one line naming the holder (exit 2). The lock is removed on every way out
(``finally``: errors, Ctrl-C, SIGTERM); only a process killed outright (SIGKILL, a power cut) leaves it, and
then it is *stale*: its holder was on this host and is gone (the kernel dropped its ``flock``; its pid is no
longer running, or runs a process started after the lock was taken), so the next writer takes it over.
A lock of another host is never taken over (its process cannot be checked from here); the message says
which file to delete if that job is gone.

The jobs of a ``--shard i/n`` array write one folder by design, so each holds a lock of its own
(``.autoseg.lock.shard-i-of-n``), and a job is refused only by a live lock whose cases can overlap its own: job
``i/n`` takes the sorted cases ``i, i+n, i+2n, ...``, so ``i/n`` and ``j/m`` share a case (given enough cases) exactly
when ``i = j (mod gcd(n, m))``. Thus ``0/2`` and ``1/2`` (or ``1/2`` and ``0/4``) run side by side, while a second
``0/2``, ``0/2`` beside ``0/4``, and a run without ``--shard`` (``0/1``, every case) beside any job are refused.
Taking a lock and looking at the others is one step under a ``flock`` on the folder, so of two overlapping jobs
started at once exactly one runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
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
_SHARD_LOCK = re.compile(re.escape(LOCK_NAME) + r"\.shard-(\d+)-of-(\d+)")


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


def shard_of_lock(name: str) -> tuple[int, int] | None:
    """The ``(i, n)`` of a lock file's name (``(0, 1)`` for the plain lock); None for any other file."""
    if name == LOCK_NAME:
        return 0, 1
    m = _SHARD_LOCK.fullmatch(name)
    return (int(m[1]), int(m[2])) if m and int(m[1]) < int(m[2]) else None


def shards_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether jobs ``i/n`` and ``j/m`` can be given one case: some index k has k = i (mod n) and k = j (mod m),
    which by the Chinese remainder theorem is when i = j (mod gcd(n, m))."""
    return (a[0] - b[0]) % math.gcd(a[1], b[1]) == 0


def _shard_words(shard: tuple[int, int]) -> str:
    return f"--shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "no --shard"


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
        _release(fd, path)
        _remove_if_empty(folder, created)


def read_holder(path: Path) -> LockHolder | None:
    """The holder written in a lock file; None when it is gone or unreadable."""
    try:
        return LockHolder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _acquire(path: Path, me: LockHolder, fix: str) -> int:
    """The open, flock-ed lock file, created or taken over from a dead holder, with no live lock of an overlapping
    shard beside it; else a one-line error. (One step under the folder's flock: see the module docstring.)"""
    with _folder_flock(path.parent):
        fd = _take(path, me, fix)
        try:
            _refuse_overlapping(path, me, fix)
        except BaseException:
            _release(fd, path)
            raise
        return fd


def _take(path: Path, me: LockHolder, fix: str) -> int:
    """The lock file ``path``, created or taken over from a dead holder; else a one-line error naming its holder."""
    for _ in range(5):   # (the file may vanish or change between the steps below: look again)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = _take_over_if_stale(path, me)
            if fd is not None:
                return fd
            if path.exists():
                raise _held(path, me, fix, path)
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


def _refuse_overlapping(path: Path, me: LockHolder, fix: str) -> None:
    """A one-line error if a live lock of another shard beside ``path`` can be given one of its cases."""
    mine = shard_of_lock(path.name)
    if mine is None:
        return
    for other in sorted(path.parent.iterdir()):
        theirs = shard_of_lock(other.name)
        if other.name != path.name and theirs is not None and shards_overlap(mine, theirs) and _live(other, me):
            raise _held(other, me, fix, path)


def _held(lock: Path, me: LockHolder, fix: str, mine: Path) -> Exception:
    """The line for a folder written by the holder of ``lock`` (``mine``: the lock this writer wanted)."""
    holder = read_holder(lock)
    if holder is None and lock.exists():   # (being written this instant?)
        time.sleep(0.1)
        holder = read_holder(lock)
    ours, theirs = shard_of_lock(mine.name), shard_of_lock(lock.name)
    shards = ""
    if lock != mine and ours is not None and theirs is not None:
        shards = f", with {_shard_words(theirs)}, whose cases overlap this run's ({_shard_words(ours)})"
        fix = f"{fix}, or give the jobs of one array the same n and different i (--shard 0/N ... N-1/N)"
    elif theirs is not None and theirs[1] > 1:
        shards = f", with the same {_shard_words(theirs)}"
    if holder is None:
        return fail(lock.parent, f"being written by another process (lock {lock.name} without its holder){shards}",
                    f"wait for it to finish, or {fix}; if no autoseg command writes here, delete {lock}")
    tail = f"; if that job is gone, delete {lock}" if holder.host != me.host else ""
    return fail(lock.parent, f"being written by another {holder.describe()}{shards}",
                f"wait for it to finish, or {fix}{tail}")


def _live(path: Path, me: LockHolder) -> bool:
    """Whether the lock file ``path`` is held by a writer (not stale; see :func:`_stale`)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not _stale(fd, path, me)
    except OSError:
        return True
    finally:
        os.close(fd)   # (drops the flock _stale may have taken)


def _take_over_if_stale(path: Path, me: LockHolder) -> int | None:
    """The lock file, now ours, if its holder is gone; None if it is held (or vanished)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        if _stale(fd, path, me) and os.path.samestat(os.fstat(fd), os.stat(path)):
            _write(fd, me)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _stale(fd: int, path: Path, me: LockHolder) -> bool:
    """Whether the open lock file's holder is gone: on this host, its flock free (taken here, and kept while ``fd``
    is open) and its process not running; a file without its holder, when free and older than the grace time."""
    held = not _flock(fd)
    holder = read_holder(path)
    if holder is None:
        return not held and time.time() - os.fstat(fd).st_mtime > UNREADABLE_GRACE_S
    return holder.host == me.host and not held and not _running(holder)


@contextlib.contextmanager
def _folder_flock(folder: Path) -> Iterator[None]:
    """Hold the kernel's lock on ``folder`` itself for a moment (taking a lock file and looking at the others),
    so two writers starting at once do this one after the other. Where the file system has none, no wait: two
    overlapping jobs started in the same instant may then both be refused, never both run."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _release(fd: int, path: Path) -> None:
    """Remove the lock file if it is still the one ``fd`` holds (never another's), and close it."""
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.unlink(path)
    os.close(fd)


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
