"""One party of an FL_Experiment: ``python -m pyfed.sim.child server|client``.

FL_Experiment starts each party as a fresh interpreter running this module, never the user's
script: a script without an ``if __name__ == "__main__":`` guard would otherwise run again in
every child (multiprocessing's "spawn" re-imports the parent's main module to find the target).

What the party needs arrives on stdin: one JSON line (the parent's ``sys.path``, so modules the
user imported resolve here too), then a cloudpickle payload. cloudpickle pickles functions and
classes defined in the user's ``__main__`` by value, which is why this local parent-to-child
handoff uses it (and nothing else in PyFed does; DESIGN.md). The server reports to the parent
as JSON lines on the file descriptor named by ``--report-fd``; nothing comes back pickled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..experiment import CLIENT, FINAL_WEIGHTS, SERVER


def read_payload(stream) -> dict:
    header = json.loads(stream.readline())
    # As multiprocessing's spawn does: the parent's path, so by-reference pickles import here.
    sys.path[:] = [entry for entry in header["sys_path"] if isinstance(entry, str)]
    import cloudpickle

    return cloudpickle.loads(stream.read())


def _setup(seed: int | None) -> None:
    if seed is not None:  # each party gets its own stream, reproducibly
        import keras

        keras.utils.set_random_seed(seed)


class Reporter:
    """JSON lines to the parent, on a descriptor this process's own children do not inherit."""

    def __init__(self, fd: int):
        os.set_inheritable(fd, False)
        self._file = os.fdopen(fd, "wb", buffering=0)

    def send(self, **event) -> None:
        try:
            self._file.write(json.dumps(event).encode() + b"\n")
        except BrokenPipeError:  # the parent is gone; there is nobody left to tell
            pass


def run_server(spec: dict, report: Reporter) -> int:
    import numpy as np

    from ..errors import PyFedError

    try:
        _setup(spec["seed"])
        from ..models import adapter_from_description
        from ..server.fl_server import FL_Server

        adapter = adapter_from_description(spec["model"])
        adapter.set_weights(spec["weights"])
        model = getattr(adapter, "model", adapter)
        server = FL_Server(model, spec["num_clients"], spec["rounds"], port=spec["port"],
                           **spec["server_options"])
        server.print_logs_line = False  # the parent says where the logs are, after its test
        server.start()
        report.send(event="listening", port=server.port, run_dir=str(server.run_dir))
        history = server.train()
        weights_file = server.run_dir / FINAL_WEIGHTS
        np.savez(weights_file, *server.adapter.get_weights())
        report.send(event="done", history=history.to_dict(), weights=str(weights_file))
        return 0
    except PyFedError as exc:  # expected failures: one clear line, no traceback
        report.send(event="error", error=f"{type(exc).__name__}: {exc}")
        return 1
    except BaseException as exc:  # a bug (or an exit): report it, then let it propagate
        report.send(event="error", error=f"{type(exc).__name__}: {exc}")
        raise


def run_client(spec: dict) -> int:
    from ..errors import PyFedError

    _setup(spec["seed"])
    from ..client.fl_client import FL_Client

    try:
        client = FL_Client(spec["name"], spec["data"], spec["target"], server_ip=spec["host"],
                           server_port=spec["port"], **spec["client_options"])
        client.train(**spec["train"])
    except PyFedError as exc:
        print(f"pyfed-{spec['name']}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyfed.sim.child")
    parser.add_argument("role", choices=[SERVER, CLIENT])
    parser.add_argument("--report-fd", type=int)
    args = parser.parse_args(argv)
    report = Reporter(args.report_fd) if args.report_fd is not None else None
    try:
        spec = read_payload(sys.stdin.buffer)
        if args.role == SERVER:
            return run_server(spec, report)
        return run_client(spec)
    except KeyboardInterrupt:  # Ctrl-C reaches every party; the parent says what happened
        return 130


if __name__ == "__main__":
    sys.exit(main())
