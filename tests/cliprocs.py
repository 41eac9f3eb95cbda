"""Real processes for the CLI and example tests, always ended by PID and reaped.

Each process starts in its own session, so its process group id is its PID. ``pyfed
experiment`` spawns grandchildren (the server and clients); ending the group ends them too if
the CLI process itself is stuck. Output goes to files, never pipes, so nothing blocks on a full
pipe; stdout and stderr are kept apart so tests can check what went where.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import procs  # noqa: E402  (tests/ is on sys.path)
from procs import free_port  # noqa: E402,F401  (re-exported for the CLI tests)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The console script installed next to this interpreter by `pip install -e .`.
PYFED_SCRIPT = Path(sys.executable).with_name("pyfed")

# TensorFlow's native start-up chatter (oneDNN, CUDA probing) ignores TF_CPP_MIN_LOG_LEVEL.
_TF_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "To enable the following")


# TensorFlow's start-up lines, as TF 2.21 prints them with TF_CPP_MIN_LOG_LEVEL unset (9 per
# process: the absl notice, oneDNN, CUDA probing, CPU features) and older versions' variants.
TF_NOISE = re.compile(r"oneDNN|cpu_feature_guard|absl::InitializeLog|This TensorFlow binary|"
                      r"Unable to register cu|cudart_stub|cuInit|To enable the following "
                      r"instructions|^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)


def child_env(**extra) -> dict:
    """procs.child_env, without the dataset switches a developer may have set in their shell."""
    env = procs.child_env(**{"TF_CPP_MIN_LOG_LEVEL": 2, **extra})
    if "PYFED_MNIST" not in extra:
        env.pop("PYFED_MNIST", None)
    if "PYFED_DATASET" not in extra:
        env.pop("PYFED_DATASET", None)
    return env


def without_tf_noise(text: str) -> str:
    lines = [line for line in text.splitlines()
             if not line.startswith(_TF_NOISE) and not (line[:1] in "IWE" and line[1:5] == "0000")]
    return "\n".join(lines)


class Processes:
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv, cwd, env=None) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.out", "wb") as out, \
                open(self.log_dir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env or child_env(),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def out(self, name: str) -> str:
        return (self.log_dir / f"{name}.out").read_text(errors="replace")

    def err(self, name: str) -> str:
        return without_tf_noise((self.log_dir / f"{name}.err").read_text(errors="replace"))

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish within {timeout:g} s\n{self.dump()}") from None

    def wait_all(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        return {name: self.wait(name, max(0.1, deadline - time.monotonic())) for name in self.procs}

    def dump(self) -> str:
        return "\n".join(f"--- {name} (rc={p.poll()})\n[stdout]\n{self.out(name)[-3000:]}\n"
                         f"[stderr]\n{self.err(name)[-3000:]}" for name, p in self.procs.items())

    def close(self) -> None:
        """SIGTERM each still-running process group, SIGKILL it after a grace period, reap."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in running:
            while time.monotonic() < deadline and not _exited_unreaped(proc.pid):
                time.sleep(0.05)
        for proc in running:
            # The leader is not reaped yet, so its PID (the group id) still names only our
            # processes; this also ends any grandchild that outlived it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _exited_unreaped(pid: int) -> bool:
    """Has the child exited? Asked with WNOWAIT, so it stays a zombie and keeps its PID."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None
