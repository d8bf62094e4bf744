"""autoseg-ensemble (not built yet)."""

from __future__ import annotations

from collections.abc import Sequence

from autoseg.errors import AutosegError, run_cli


def _main(argv: Sequence[str] | None) -> int:
    raise AutosegError("autoseg-ensemble is not built yet in this version; see the open issues")


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-ensemble", _main, argv)
