"""User-facing errors: one line that names the file and the fix, exit code 2, no traceback."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path


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


def run_cli(prog: str, fn: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            resume_hint: str = "rerun the same command to continue where it stopped") -> None:
    """Run a command's body and turn errors into one-line messages and exit codes.

    AutosegError -> message on stderr, exit 2. Ctrl-C -> exit 130. Any other exception is a bug:
    one line plus a hint, unless AUTOSEG_DEBUG=1 asks for the traceback.
    """
    try:
        try:
            code = fn(argv)
        except BaseException:
            _close_progress_bars()   # so the message starts on its own line, not after a half-drawn bar
            raise
    except AutosegError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
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
        print(f"{prog}: error: {name}{e.strerror or e}; check the path, its permissions and free disk space", file=sys.stderr)
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
