"""Serverless federation without sockets: stored updates (pyfed.serverless.frames) and the
shared folder (pyfed.serverless.storage). FederatedNode in one process is tested in
test_serverless_node.py, as real processes in test_serverless_faults.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from pyfed.errors import ConfigurationError, StorageError, StoredUpdateError
from pyfed.serverless import FederatedNode
from pyfed.serverless.frames import decode_update, encode_update
from pyfed.serverless.storage import FileGone, open_folder
from pyfed.wire import protocol
from pyfed.wire.messages import FitResult, NodeUpdate
from pyfed.wire.spec import spec_hash, spec_of_arrays

WEIGHTS = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.array([0.5, -1.5], np.float32))
SPEC = spec_of_arrays(WEIGHTS)
HASH = spec_hash(SPEC)


def stored(weights=WEIGHTS, spec_hash_=HASH, **fields) -> bytes:
    values = {"node": "a", "epoch": 3, "num_examples": 10, "metrics": {"loss": 0.5}, **fields}
    return encode_update(NodeUpdate(spec_hash=spec_hash_, weights=tuple(weights), **values))


def memory_url() -> str:
    return f"memory://pyfed-test-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------------------------
# Stored frames
# ---------------------------------------------------------------------------------------------


def test_a_stored_update_round_trips_with_the_body_checksum():
    data = stored()
    update = decode_update(data, SPEC, HASH)
    assert (update.node, update.epoch, update.num_examples, update.metrics, update.spec_hash) == (
        "a", 3, 10, {"loss": 0.5}, HASH)
    for got, want in zip(update.weights, WEIGHTS):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    header_length, body_length = protocol.PREFIX.unpack(data[:protocol.PREFIX_SIZE])[4:]
    assert update.checksum == hashlib.sha256(data[-body_length:]).hexdigest()
    assert isinstance(protocol.decode(data), NodeUpdate)  # plain PyFed wire format


def corruptions() -> dict[str, tuple[bytes, str]]:
    good = stored()
    header_end = protocol.PREFIX_SIZE + protocol.PREFIX.unpack(good[:protocol.PREFIX_SIZE])[4]
    flipped = bytearray(good)
    flipped[header_end + 5] ^= 0x01
    cases = {
        "garbage": (b"\x00\x01garbage that is not a frame" * 3, "not a PyFed frame"),
        "json-file": (json.dumps({"weights": [1, 2]}).encode(), "not a PyFed frame"),
        "empty": (b"", "truncated"),
        "flipped-body-byte": (bytes(flipped), "checksum mismatch"),
        "trailing-bytes": (good + b"\x00", "after the frame's declared end"),
        "other-spec": (stored(spec_hash_="f" * 64), f"spec {'f' * 64}.*{HASH}"),
        "wrong-layout-shape": (stored(weights=(np.zeros((4, 3), np.float32), WEIGHTS[1])),
                               "shape"),
        "wrong-layout-count": (stored(weights=WEIGHTS[:1]), "arrays"),
        "wrong-dtype": (stored(weights=(WEIGHTS[0].astype(np.float64), WEIGHTS[1])),
                        "body length|dtype"),
        "nan": (stored(weights=(WEIGHTS[0], np.array([np.nan, 1], np.float32))), "nan"),
        "inf": (stored(weights=(WEIGHTS[0], np.array([1, -np.inf], np.float32))), "inf"),
        "huge": (stored(weights=(WEIGHTS[0] * 1e19, WEIGHTS[1])), "within"),
        "no-examples": (stored(num_examples=0), "num_examples"),
        "bad-metric": (stored(metrics={"loss": "high"}), "metrics"),
        "fit-result-frame": (protocol.encode_bytes(FitResult(round=1, weights=WEIGHTS)),
                             "FIT_RESULT frame, not a NODE_UPDATE"),
    }
    for cut in (1, 10, protocol.PREFIX_SIZE, protocol.PREFIX_SIZE + 7, header_end,
                header_end + 9, len(good) - 1):
        cases[f"truncated-at-{cut}"] = (good[:cut], "truncated")
    return cases


CORRUPTIONS = corruptions()


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_every_corruption_is_refused_saying_what_is_wrong(case):
    data, says = CORRUPTIONS[case]
    with pytest.raises(StoredUpdateError, match=says):
        decode_update(data, SPEC, HASH)


class Bait:
    """Unpickling this creates the marker file (it is what a malicious pickle does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def baits(tmp_path) -> tuple[str, bytes, bytes]:
    marker = str(tmp_path / "MARKER")
    return marker, pickle.dumps(Bait(marker)), f"open({marker!r}, 'w').close()\n".encode()


def test_pickles_and_python_files_in_the_folder_are_never_loaded(tmp_path, caplog):
    marker, pickled, code = baits(tmp_path)
    with pytest.raises(StoredUpdateError, match="not a PyFed frame"):
        decode_update(pickled, SPEC, HASH)
    folder = tmp_path / "shared"
    prefix = HASH[:16]
    for path, data in {f"updates/evil/00000000-{prefix}.pyfd": pickled,
                       f"updates/evil/00000001-{prefix}.pyfd": pickled,
                       "updates/evil/weights.pkl": pickled, "updates/evil/__init__.py": code,
                       "updates/evil.py": code, "sitecustomize.py": code}.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="pyfed"):
        with FederatedNode(folder, "a", mode="async") as node:
            for epoch in range(3):
                node.update(WEIGHTS, 5)
        with FederatedNode(folder, "b", mode="sync", num_nodes=1) as node:
            node.update(WEIGHTS, 5, epoch=1)
    assert not os.path.exists(marker)
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert any("00000000-" in m and "not a PyFed frame" in m for m in skipped), skipped
    assert any("weights.pkl" in m and "never loaded as code" in m for m in skipped), skipped
    # The baits are live: what PyFed never does would have left the marker.
    subprocess.run([sys.executable, "-c", "import pickle, sys; "
                    "pickle.loads(sys.stdin.buffer.read())"], input=pickled, check=True,
                   timeout=60, cwd=tmp_path)
    assert os.path.exists(marker)
    os.unlink(marker)
    subprocess.run([sys.executable, str(folder / "updates/evil.py")], check=True, timeout=60)
    assert os.path.exists(marker)


# ---------------------------------------------------------------------------------------------
# The shared folder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["path", "file", "memory"])
def folder_url(request, tmp_path):
    return {"path": str(tmp_path / "f"), "file": f"file://{tmp_path}/f",
            "memory": memory_url()}[request.param]


def test_put_get_list_remove(folder_url):
    folder = open_folder(folder_url)
    folder.put("updates/a/1.pyfd", b"one")
    folder.put("nodes/a.json", b"{}")
    folder.put("updates/a/1.pyfd", b"uno")
    assert folder.list() == ["nodes/a.json", "updates/a/1.pyfd"]
    assert folder.list("updates") == ["updates/a/1.pyfd"]
    assert folder.list("missing") == []
    assert folder.get("updates/a/1.pyfd") == b"uno"
    assert folder.get("updates/a/1.pyfd", max_bytes=1) == b"un"  # the cap, plus one byte
    folder.remove("nodes/a.json")
    folder.remove("nodes/a.json")  # already gone: fine
    assert folder.list() == ["updates/a/1.pyfd"]
    with pytest.raises(FileGone, match=f"{folder.url}.*nodes/a.json"):
        folder.get("nodes/a.json")
    with pytest.raises(StorageError, match="bad relative path"):
        folder.get("../outside")


def test_a_local_put_leaves_no_temporary_file_even_when_it_fails(tmp_path):
    folder = open_folder(tmp_path / "f")
    for i in range(5):
        folder.put("updates/a/x.pyfd", bytes([i]) * 1000)
    (tmp_path / "f/updates/a/taken.pyfd").mkdir()  # a directory where the file should go
    with pytest.raises(StorageError, match=f"cannot write {tmp_path}/f/updates/a/taken.pyfd"):
        folder.put("updates/a/taken.pyfd", b"data")
    assert sorted(os.listdir(tmp_path / "f/updates/a")) == ["taken.pyfd", "x.pyfd"]


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_a_reader_never_sees_a_partial_file(tmp_path, kind):
    folder = open_folder(tmp_path / "f" if kind == "path" else memory_url())
    payloads = [bytes([1]) * (4 << 20), bytes([2]) * (3 << 20) + b"end"]
    folder.put("x", payloads[0])
    seen, errors = set(), []

    def writer():
        for i in range(40):
            folder.put("x", payloads[i % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while thread.is_alive() or not seen:
            data = folder.get("x")
            if data not in payloads:
                errors.append(len(data))
            seen.add(payloads.index(data) if data in payloads else -1)
    finally:
        thread.join(timeout=60)
    folder.remove("x")  # a memory:// folder lives as long as the process
    assert not errors, f"partial reads of {errors[:5]} bytes"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_open_folder_errors_name_the_url(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match=f"cannot open {tmp_path}/file/sub"):
        open_folder(tmp_path / "file" / "sub")
    with pytest.raises(ConfigurationError, match="nosuchfs://x"):
        open_folder("nosuchfs://x")
