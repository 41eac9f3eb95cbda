"""Keep TensorFlow's start-up noise off the terminal, as the TF log level asks.

With ``TF_CPP_MIN_LOG_LEVEL`` unset, TensorFlow 2.21 prints 9 lines per process on import and
first device use (oneDNN, CUDA probing, CPU features, and absl's "All log messages before
absl::InitializeLog()"): 36 lines for a 2-client FL_Experiment. Even level 3 leaves 6 of them,
because they are logged before absl reads any setting.

So PyFed runs TensorFlow's first import, plus the device probe that prints the CUDA error,
with file descriptor 2 captured, and writes back everything captured except the start-up lines
that the level hides:

- level unset: PyFed sets 2 (later errors still show) and also drops the CUDA-probing ERROR
  lines of a machine without a GPU: zero lines of start-up noise.
- level set by the user: exactly what it promises, applied to the lines TensorFlow prints
  before reading it (1 hides INFO, 2 also WARNING, 3 also ERROR); 0 shows everything, and
  nothing is captured at all. The variable itself is never changed.

``TF_ENABLE_ONEDNN_OPTS`` is never changed. PyFed's own choice travels to child processes in
``PYFED_QUIET_TF``, so the processes PyFed starts (FL_Experiment's parties) are quiet too, and
a user's level is not mistaken for PyFed's.

This module imports nothing heavy: ``pyfed/__init__`` installs it before anything can import
TensorFlow. If TensorFlow is already imported, it is too late and nothing is done.

A fork server (:mod:`pyfed.sim.forkserver`) imports TensorFlow for the processes it forks later:
it calls :func:`defer_device_probe` first, because the probe initializes CUDA where there is a
GPU and CUDA does not survive a fork; each forked process then calls :func:`probe_devices`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
MARKER_VARIABLE = "PYFED_QUIET_TF"
DEFAULT_LEVEL = "2"

# What TensorFlow prints while it starts: absl's notice, lines in glog format (severity first),
# the CPU-feature hint that continues an INFO line, and the ERROR lines of CUDA probing.
_NOTICE = re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called")
_GLOG = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] (.*)$")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
_CUDA_PROBING = re.compile(rb"cuda|cuInit|Unable to register cu|TensorRT|TF-TRT", re.I)
_CPU_HINT = re.compile(rb"^To enable the following instructions: ")


def is_start_up_noise(line: bytes, level: int, cuda_probing: bool = False) -> bool:
    """Does TF log ``level`` hide this start-up line? ``cuda_probing``: also the CUDA errors."""
    match = _GLOG.match(line)
    if match:
        severity, message = _SEVERITY[match.group(1)], match.group(2)
        return severity < level or (cuda_probing and severity == 2
                                    and bool(_CUDA_PROBING.search(message)))
    return level >= 1 and bool(_NOTICE.match(line) or _CPU_HINT.match(line))


def chosen_by_pyfed() -> bool:
    return (os.environ.get(MARKER_VARIABLE) == "1"
            and os.environ.get(LEVEL_VARIABLE) == DEFAULT_LEVEL)


def current_level() -> int:
    try:
        return int(os.environ.get(LEVEL_VARIABLE, "0"))
    except ValueError:  # TensorFlow reads an unparsable level as 0
        return 0


_probe_on_import = True


def defer_device_probe() -> None:
    """The quiet import will not probe the devices; call :func:`probe_devices` later."""
    global _probe_on_import
    _probe_on_import = False


def probe_devices() -> None:
    """The device probe a deferred import skipped, as quiet as it would have been."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None:
        return
    if current_level() < 1:  # nothing is hidden: TensorFlow probes on first use, as usual
        return
    with captured_start_up_noise(), contextlib.suppress(Exception):
        tensorflow.config.list_physical_devices()


def install() -> None:
    """Set the quiet level if the user has not, and quiet TensorFlow's first import."""
    if LEVEL_VARIABLE not in os.environ:
        os.environ[LEVEL_VARIABLE] = DEFAULT_LEVEL
        os.environ[MARKER_VARIABLE] = "1"
    if current_level() < 1 or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def captured_start_up_noise():
    """Capture file descriptor 2; on the way out, write back all but TF's start-up lines."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as capture:
        _flush_python_stderr()
        os.dup2(capture.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().splitlines(keepends=True)
            # If the import failed, every captured line may matter: write them all back.
            level, cuda_probing = current_level(), chosen_by_pyfed()
            kept = b"".join(line for line in lines if failed or not is_start_up_noise(
                line.rstrip(), level, cuda_probing))
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, kept)


def _flush_python_stderr() -> None:
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the normal finders, and wraps its loader, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once, whoever imports TensorFlow first (keras does)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with captured_start_up_noise():
            self._loader.exec_module(module)
            # The first device probe prints CUDA's error; list_physical_devices does not fix
            # the devices, so set_visible_devices and memory growth still work afterwards.
            if _probe_on_import:
                with contextlib.suppress(Exception):
                    module.config.list_physical_devices()
        # From now on the module looks exactly as if imported normally.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader

    def __getattr__(self, name):  # get_filename, is_package, resource readers...
        return getattr(self._loader, name)
