"""User-facing errors: one line that names the file and the fix, exit code 2, no traceback.

Stopping a command: Ctrl-C raises KeyboardInterrupt, and SIGTERM (what ``kill``, SLURM and Kubernetes send
first) raises :class:`Terminated`, a KeyboardInterrupt, so both take the same way out: every ``finally`` and
``with`` on the way runs (temporaries deleted, worker pools stopped, their semaphores released) and
:func:`run_cli` prints one line, exit 130 or 143.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType


class AutosegError(Exception):
    """A problem with the user's input or environment, reported as one line.

    The message should name the offending file (or option) and say how to fix it.
    """

    exit_code = 2


def fail(path: str | os.PathLike | None, problem: str, fix: str | None = None) -> AutosegError:
    """Build the standard one-line error ``PATH: problem; fix``."""
    where = f"{path}: " if path is not None else ""
    tail = f"; {fix}" if fix else ""
    return AutosegError(f"{where}{problem}{tail}")


class ProblemList:
    """Collects every problem found (e.g. by the dataset check) so all are reported, not just the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str | os.PathLike | None, problem: str, fix: str | None = None) -> None:
        self.items.append(str(fail(path, problem, fix)))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, what: str) -> None:
        """Raise one AutosegError whose message lists every problem, one per line."""
        if self.items:
            head = f"{what}: {len(self.items)} problem(s) found"
            raise AutosegError("\n".join([head, *("  " + p for p in self.items)]))


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that whatever cleans up after Ctrl-C cleans up after it too."""

    exit_code = 128 + signal.SIGTERM


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _default_sigterm_in_child() -> None:
    """A forked child (a data-loader worker) gets SIGTERM's default action back: its parent answers SIGTERM, and
    ``Process.terminate()`` (which sends SIGTERM) must end the child at once, not raise in it."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_fork_hook_installed = False


def stop_on_sigterm() -> Callable | int | None:
    """Make SIGTERM raise :class:`Terminated` in the main thread; return the handler it replaces.

    Only the main thread can set handlers: elsewhere (a command run from a thread) nothing changes. Spawned
    children start with the default action anyway; forked ones get it back (see ``_default_sigterm_in_child``).
    """
    global _fork_hook_installed
    if threading.current_thread() is not threading.main_thread():
        return None
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_default_sigterm_in_child)
        _fork_hook_installed = True
    return signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Finish the block before Ctrl-C or SIGTERM take effect; they are delivered when it ends.

    For a few seconds of writes that belong together (the checkpoint of a finished training epoch), so that
    stopping a command never throws away work that was already complete. Main thread only; elsewhere a no-op.
    """
    watched = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(signal.getsignal(s) is None for s in watched):
        yield   # (None: a handler installed outside Python, which could not be put back)
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in watched}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(arrived):   # now answered by the restored handlers (Terminated, KeyboardInterrupt)
            signal.raise_signal(s)


def run_cli(prog: str, fn: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            resume_hint: str = "rerun the same command to continue where it stopped") -> None:
    """Run a command's body and turn errors into one-line messages and exit codes.

    AutosegError -> message on stderr, exit 2. Ctrl-C -> exit 130; SIGTERM -> exit 143, after the same
    cleanup. Any other exception is a bug: one line plus a hint, unless AUTOSEG_DEBUG=1 asks for the traceback.
    """
    previous = stop_on_sigterm()
    try:
        _run(prog, fn, argv, resume_hint)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(prog: str, fn: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None,
         resume_hint: str) -> None:
    try:
        try:
            code = fn(argv)
        except BaseException:
            _close_progress_bars()   # so the message starts on its own line, not after a half-drawn bar
            raise
    except AutosegError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Terminated:
        print(f"{prog}: terminated (SIGTERM); {resume_hint}", file=sys.stderr)
        sys.exit(Terminated.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume_hint}", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print(f"{prog}: error: out of memory; use fewer workers (-np 1) or a smaller patch (--vram)", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if os.environ.get("AUTOSEG_DEBUG"):
            raise
        name = f"{e.filename}: " if getattr(e, "filename", None) else ""
        fix = ("shorten the file or folder name" if e.errno == errno.ENAMETOOLONG
               else "check the path, its permissions and free disk space")
        print(f"{prog}: error: {name}{e.strerror or e}; {fix}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - last resort so users never see a raw traceback
        if os.environ.get("AUTOSEG_DEBUG"):
            raise
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        print(f"{prog}: internal error: {type(e).__name__}: {e}{where}; rerun with AUTOSEG_DEBUG=1 and report it",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(int(code or 0))


def _close_progress_bars() -> None:
    """Close tqdm bars an error left open: each ends its line, so the error message is a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - closing a bar must never hide the real error
            pass
