"""The built-in progress printer: one line per round, and the server's status lines.

The only place the server prints progress; ``verbose=0`` leaves it out, and the lines then go
only to the ``pyfed`` logger (at DEBUG).
"""

from __future__ import annotations

import sys

from .hooks import ServerCallback, logging_configured
from .logs import format_metrics, logs_line, round_line, version_line
from .round_logs import counters, sections


class ProgressPrinter(ServerCallback):
    """``round 3/10 · 3 clients · fit loss 0.41 acc 0.88 · test loss … · 0.4 s · 61 kB in / …``"""

    def __init__(self, stream=None) -> None:
        self.stream = stream  # None: sys.stdout at the time of printing

    def on_status(self, server, line: str, warning: bool = False) -> None:
        if not warning:
            self._print(line)
        elif not logging_configured():  # the logger has it already when logging is set up
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def on_round_end(self, server, server_round: int, logs: dict) -> None:
        found = sections(logs)
        counted = counters(logs)
        extra = " · ".join(format_metrics(section, values)
                           for section, values in found.items() if section != "fit")
        if logs.get("epsilon") is not None:  # differential privacy's budget spent so far
            extra = " · ".join(filter(None, [extra, f"ε {logs['epsilon']:.2f}"]))
        if "staleness" in logs:  # an asynchronous version
            self._print(version_line(server_round, server.rounds, logs["staleness"],
                                     counted.get("seconds", 0.0), extra=extra))
            return
        self._print(round_line(server_round, server.rounds, counted.get("participants", 0),
                               found.get("fit", {}), counted.get("seconds", 0.0),
                               counted.get("bytes_in", 0), counted.get("bytes_out", 0),
                               extra=extra))

    def on_train_end(self, server, history) -> None:
        # FL_Experiment's parent says where the logs are itself, after its test.
        if server.print_logs_line and server.completed:
            self._print(logs_line(server.run_dir, server.logdir))

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)
