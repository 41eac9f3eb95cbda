"""The ``pyfed`` command: ``experiment``, ``server``, ``client``, ``partition`` and ``token``.

Expected failures (a :class:`~pyfed.errors.PyFedError`, a missing data file) print one line to
stderr and exit with status 2, like argparse's own usage errors; only bugs show a traceback.
TensorFlow is imported only by the subcommands that train.
"""

from __future__ import annotations

import logging
import sys

from .commands import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from .commands.inputs import build_model, load_array, load_object, mnist_model, parse_metrics
from .commands.parser import build_parser
from .commands.splitting import split_data
from .errors import PyFedError

# Re-exported: ``pyfed.cli:mnist_model`` is the mnist experiment's default --model, and tests
# and scripts import these from here (each part lives in pyfed.commands).
__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "build_model", "build_parser",
           "configure_logging", "load_array", "load_object", "main", "mnist_model",
           "parse_metrics", "split_data"]


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    if not any(getattr(h, "_pyfed_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        handler._pyfed_cli = True
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("pyfed").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0))
    try:
        return args.func(args)
    except (PyFedError, FileNotFoundError) as exc:
        print(f"pyfed {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"pyfed {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
