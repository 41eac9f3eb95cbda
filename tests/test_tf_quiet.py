"""pyfed.tf_quiet: which lines are TensorFlow's start-up noise, and who chose the log level.

The end-to-end check (a whole FL_Experiment with the level unset prints nothing on stderr, and a
user's level reaches every process) is in test_experiment.py; the CLI's in test_cli.py.
"""

import json
import subprocess
import sys

from procs import child_env

from pyfed.tf_quiet import is_start_up_noise

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796135695.642482    5732 port.cc:153] oneDNN custom operations are on. You "
    b"may see slightly different numerical results",
    b"I0000 00:00:1796135695.643011    5732 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.",
    b"I0000 00:00:1796135695.717610    5732 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations.",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.",
    b"E0000 00:00:1796135699.387663    5732 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"E0000 00:00:1700000000.000000    1234 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
    b"Attempting to register factory for plugin cuDNN when one has already been registered",
]
KEPT = [
    b"E0000 00:00:1796135699.387663    5732 op_kernel.cc:1818] OP_REQUIRES failed: out of memory",
    b"F0000 00:00:1796135699.387663    5732 check.cc:1] Check failed: something real",
    b"14:33:59 WARNING pyfed: round 1: client_2 did not contribute: timed out",
    b"Traceback (most recent call last):",
]


def test_start_up_lines_are_noise_and_real_errors_are_not():
    # PyFed's own level (2, plus the CUDA probing errors of a machine without a GPU): all go.
    assert [line for line in NOISE if not is_start_up_noise(line, 2, cuda_probing=True)] == []
    assert [line for line in KEPT if is_start_up_noise(line, 2, cuda_probing=True)] == []
    # A user's level means what TensorFlow says it means: 2 keeps errors, 0 keeps everything.
    assert [line for line in NOISE if not is_start_up_noise(line, 2)] == NOISE[-2:]
    assert [line for line in NOISE + KEPT if is_start_up_noise(line, 0)] == []
    assert [line for line in NOISE if not is_start_up_noise(line, 3)] == []
    assert [line for line in KEPT if is_start_up_noise(line, 3)] == [KEPT[0]]  # an E line


PROBE = """
import json, os, sys
import pyfed
print(json.dumps({"level": os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
                  "marker": os.environ.get("PYFED_QUIET_TF"),
                  "hooked": any(type(f).__name__ == "_QuietImport" for f in sys.meta_path),
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def probe(**env_changes) -> dict:
    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    env.pop("PYFED_QUIET_TF", None)
    env.update(env_changes)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            timeout=60, check=True)
    return json.loads(result.stdout)


def test_pyfed_sets_level_2_only_when_the_user_has_not():
    # No TensorFlow is imported to decide any of this (a numpy-only client never imports it).
    assert probe() == {"level": "2", "marker": "1", "hooked": True, "tensorflow": False}
    for level in ("0", "2", "3"):
        assert probe(TF_CPP_MIN_LOG_LEVEL=level) == {
            "level": level, "marker": None, "hooked": level != "0", "tensorflow": False}
    # A child of a PyFed process inherits PyFed's choice (and its CUDA-error filter).
    assert probe(TF_CPP_MIN_LOG_LEVEL="2", PYFED_QUIET_TF="1")["hooked"] is True
