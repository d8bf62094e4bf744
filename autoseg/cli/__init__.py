"""Thin command-line layer: one module per command; each parses arguments and calls one stage function.

The console scripts point at the launchers below, not at the command modules: a command module imports
torch, SimpleITK and scipy (about a second), and a Ctrl-C or a broken install during that import would
otherwise end in a raw traceback, before the command's own error handling (``run_cli``) is running.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from autoseg.errors import Terminated, stop_on_sigterm


def _launcher(command: str, module_name: str | None = None) -> Callable[[Sequence[str] | None], None]:
    """Entry point of ``autoseg-COMMAND``, whose code is ``autoseg.cli.MODULE_NAME`` (default: the command)."""
    def launch(argv: Sequence[str] | None = None) -> None:
        prog = f"autoseg-{command}"
        stop_on_sigterm()   # before the slow imports, so that SIGTERM then is one line too
        try:
            module = importlib.import_module(f"autoseg.cli.{module_name or command}")
        except Terminated:
            print(f"{prog}: terminated (SIGTERM) while starting; nothing was written", file=sys.stderr)
            sys.exit(Terminated.exit_code)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted while starting; nothing was written", file=sys.stderr)
            sys.exit(130)
        except ImportError as e:
            print(f"{prog}: error: cannot import {e.name or e}; the installation is incomplete: "
                  "reinstall with pip install -e . (see the README)", file=sys.stderr)
            sys.exit(2)
        module.main(argv)

    launch.__doc__ = f"Entry point of autoseg-{command}."
    return launch


autoseg_convert = _launcher("convert")
autoseg_plan = _launcher("plan")
autoseg_preprocess = _launcher("preprocess")
autoseg_train = _launcher("train")
autoseg_predict = _launcher("predict")
autoseg_evaluate = _launcher("evaluate")
autoseg_ensemble = _launcher("ensemble")
autoseg_demo = _launcher("demo")
autoseg_export = _launcher("export")
autoseg_find_best = _launcher("find-best", "find_best")
autoseg_import = _launcher("import", "import_model")   # ``import`` is a keyword: no module of that name
