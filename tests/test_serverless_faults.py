"""Serverless nodes as real processes (tests/node_roles.py, numpy only) meeting faults: bad
files dropped into the folder mid-run, a node killed with SIGKILL, two nodes with one name;
and the label-split run that shows federating through a folder pays off."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np

from conftest import tagged
from procs import ProcessGroup, child_env
from pyfed.models import SoftmaxRegression
from pyfed.serverless.frames import encode_update
from pyfed.serverless.storage import open_folder
from pyfed.wire.messages import NodeUpdate
from pyfed.wire.spec import spec_hash, spec_of_arrays

NODE = Path(__file__).with_name("node_roles.py")
MODEL_WEIGHTS = SoftmaxRegression(64, 10).get_weights()
HASH = spec_hash(spec_of_arrays(MODEL_WEIGHTS))
REPO = Path(__file__).resolve().parents[1]


def start(group: ProcessGroup, name: str, *args, node_name: str | None = None) -> None:
    env = child_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    group.start(name, [sys.executable, NODE, "--name", node_name or name, *map(str, args)],
                env=env)


def wait_for_line(group: ProcessGroup, name: str, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in group.output(name):
            return
        if group.procs[name].poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{name} never printed {text!r}:\n{group.dump()}")


def frame(weights=MODEL_WEIGHTS, hash_=HASH, node="x", epoch=0) -> bytes:
    return encode_update(NodeUpdate(node=node, epoch=epoch, num_examples=5, spec_hash=hash_,
                                    weights=tuple(weights)))


class Bait:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bad_files_dropped_mid_run_are_skipped_and_the_run_finishes(tmp_path):
    shared = tmp_path / "shared"
    marker = str(tmp_path / "MARKER")
    other_weights = [np.zeros((3, 3), np.float32)]
    other = spec_hash(spec_of_arrays(other_weights))
    with ProcessGroup(tmp_path / "procs") as group:
        for name, labels in (("a", "0-4"), ("b", "5-9")):
            start(group, name, "--folder", shared, "--labels", labels, "--mode", "async",
                  "--epochs", 12, "--sleep", 0.3)
        for name in ("a", "b"):
            wait_for_line(group, name, "EPOCH 1 ")
        folder = open_folder(shared)
        for epoch in (0, 40):
            name = f"{epoch:08d}-{HASH[:16]}.pyfd"
            folder.put(f"updates/garbage/{name}", os.urandom(3000))
            folder.put(f"updates/truncated/{name}", frame(node="truncated", epoch=epoch)[:-100])
            folder.put(f"updates/liar/{name}", frame(other_weights, other, "liar", epoch))
            folder.put(f"updates/evil/{name}", pickle.dumps(Bait(marker)))
            folder.put(f"updates/foreign/{epoch:08d}-{other[:16]}.pyfd",
                       frame(other_weights, other, "foreign", epoch))
        folder.put("updates/evil/weights.pkl", pickle.dumps(Bait(marker)))
        folder.put("updates/evil/__init__.py", f"open({marker!r}, 'w')\n".encode())
        codes = group.wait_all(timeout=300)
        assert codes == {"a": 0, "b": 0}, group.dump()
        for name in ("a", "b"):
            output = group.output(name)
            assert tagged(output, "RESULT")["epochs"] == 12
            for node, says in (("garbage", "not a PyFed frame"), ("truncated", "truncated"),
                               ("liar", f"written for model spec {other}"),
                               ("evil", "not a PyFed frame"),
                               ("foreign", "written for another model"),
                               ("evil/weights.pkl", "not a stored update")):
                lines = [line for line in output.splitlines()
                         if f"updates/{node}" in line and says in line]
                assert lines and all("never loaded as code" in line for line in lines), (
                    node, output[-3000:])
    assert not os.path.exists(marker)


def test_a_killed_node_blocks_sync_mode_for_at_most_the_timeout(tmp_path):
    shared = tmp_path / "shared"
    with ProcessGroup(tmp_path / "procs") as group:
        for name, labels in (("a", "0-3"), ("b", "4-6"), ("c", "7-9")):
            start(group, name, "--folder", shared, "--labels", labels, "--mode", "sync",
                  "--num-nodes", 3, "--timeout", 8, "--epochs", 8, "--sleep", 0.3)
        wait_for_line(group, "c", "EPOCH 2 ")
        os.kill(group.procs["c"].pid, signal.SIGKILL)
        assert group.wait("c", timeout=60) == -signal.SIGKILL
        for name in ("a", "b"):
            assert group.wait(name, timeout=300) == 0, group.dump()
            output = group.output(name)
            assert tagged(output, "RESULT")["epochs"] == 8
            said = [line for line in output.splitlines() if "going on with them" in line]
            assert said and all(f"node {name}: epoch" in line and "of 3 nodes published within "
                                "8 s (a, b)" in line for line in said), output[-3000:]
            last = [line for line in output.splitlines() if line.startswith("EPOCH 7 ")]
            assert last and '"nodes": 2' in last[0], output[-3000:]  # a and b


def test_two_processes_with_one_name_refuse_each_other_in_one_line(tmp_path):
    shared = tmp_path / "shared"
    with ProcessGroup(tmp_path / "procs") as group:
        start(group, "alice", "--folder", shared, "--mode", "async", "--epochs", 20,
              "--sleep", 0.3, "--timeout", 60)
        wait_for_line(group, "alice", "EPOCH 1 ")
        start(group, "again", "--folder", shared, "--mode", "async", "--timeout", 60,
              node_name="alice")
        assert group.wait("again", timeout=120) == 2
        lines = group.output("again").strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("node alice: error: another node named 'alice' is already "
                                   f"using the folder {shared}"), lines
        assert group.wait("alice", timeout=300) == 0, group.dump()
        assert "Traceback" not in group.output("alice")


def test_two_nodes_through_a_folder_beat_standalone_on_a_label_split(tmp_path):
    shared = tmp_path / "shared"
    with ProcessGroup(tmp_path / "procs") as group:
        for name, labels in (("low", "0-4"), ("high", "5-9")):
            start(group, name, "--folder", shared, "--labels", labels, "--mode", "sync",
                  "--num-nodes", 2, "--epochs", 10)
            start(group, f"alone-{name}", "--labels", labels, "--standalone", "--epochs", 10)
        codes = group.wait_all(timeout=300)
        assert set(codes.values()) == {0}, group.dump()
        accuracy = {name: tagged(group.output(name), "RESULT")["accuracy"]
                    for name in group.procs}
    print("accuracy on all ten classes:", accuracy)
    assert accuracy["low"] > 0.8 and accuracy["high"] > 0.8, accuracy
    assert accuracy["alone-low"] < 0.55 and accuracy["alone-high"] < 0.55, accuracy

