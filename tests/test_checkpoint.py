"""Checkpoint files: what they hold, how a damaged one fails, which one a resume picks, and
which leftovers a start removes."""

import json
import os

import numpy as np
import pytest

from pyfed.errors import PyFedError
from pyfed.server.checkpoint import (CHECKPOINT_FILE, Checkpoint, find_checkpoint, load_checkpoint,
                              remove_orphaned_temporaries, save_checkpoint)
from pyfed.strategy import FedAdam, FitResult
from pyfed.tracking.history import History


def _save(folder, server_round, mtime):
    path = save_checkpoint(folder, Checkpoint(
        server_round=server_round, weights=[np.zeros(3, np.float32)], strategy_state={},
        history={}, run_name=folder.name, spec_hash="h"))
    os.utime(path, ns=(mtime, mtime))
    return path


def test_resume_picks_the_newest_checkpoint_of_the_run_name_and_its_numbered_folders(tmp_path):
    _save(tmp_path / "exp", 2, 1_000)
    newest = _save(tmp_path / "exp-2", 7, 3_000)
    _save(tmp_path / "exp-3", 1, 2_000)
    _save(tmp_path / "expx", 9, 9_000)      # another run's name
    _save(tmp_path / "exp-a", 9, 9_000)     # not a numbered folder of exp
    assert find_checkpoint(tmp_path, "exp") == newest
    assert load_checkpoint(find_checkpoint(tmp_path, "exp")).server_round == 7
    assert find_checkpoint(tmp_path, "other") is None
    assert find_checkpoint(tmp_path) == tmp_path / "exp-a" / CHECKPOINT_FILE or \
        find_checkpoint(tmp_path) == tmp_path / "expx" / CHECKPOINT_FILE


def test_only_our_unfinished_temporaries_are_removed(tmp_path):
    ours = [".checkpoint-abcd_123.npz", ".checkpoint-zz9x0a1b.npz"]
    others = [".checkpoint-abc.npz", ".checkpoint-abcd_123.npz.keep", "x.checkpoint-abcd_123.npz",
              ".checkpoint-ABCD_123.npz", CHECKPOINT_FILE]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".checkpoint-dir_1234.npz").mkdir()  # not a file: left alone
    removed = remove_orphaned_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".checkpoint-dir_1234.npz"])
    assert remove_orphaned_temporaries(tmp_path / "missing") == []


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds: weights, strategy state and history, back as they were saved
# ---------------------------------------------------------------------------------------------


CLIENTS = [f"client_{i}" for i in range(10)]


def _weights():
    return [np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.array(2.5),  # a 0-d float64
            np.arange(5, dtype=">i8"), np.zeros((0, 3), np.float16), np.array([True, False])]


def _trained_fedadam() -> FedAdam:
    """A FedAdam after one real round: moments (arrays) and random generators that moved."""
    strategy = FedAdam(fraction_fit=0.5, seed=3)
    current = [np.zeros(4, np.float32), np.ones(2, np.float32)]
    plan = strategy.configure_fit(1, current, CLIENTS)
    strategy.begin(1, current)
    for value, (name, _) in enumerate(plan):
        strategy.add(FitResult(name, (np.full(4, value, np.float32), np.full(2, -value, np.float32)),
                               num_examples=value + 1))
    strategy.finish()
    assert strategy.m is not None and strategy.v is not None
    return strategy


def _history() -> dict:
    history = History()
    history.record(1, {"fit_loss": 0.9, "clients": ["client_1", "client_2"]})
    history.record(2, {"fit_loss": 0.5, "eval_accuracy": 0.75})
    return history.to_dict()


def test_weights_strategy_state_and_history_come_back_as_saved(tmp_path):
    strategy = _trained_fedadam()
    path = save_checkpoint(tmp_path / "run", Checkpoint(
        server_round=2, weights=_weights(), strategy_state=strategy.state_dict(),
        history=_history(), run_name="run", spec_hash="ab" * 32))
    assert path == tmp_path / "run" / CHECKPOINT_FILE
    loaded = load_checkpoint(path)
    assert (loaded.server_round, loaded.run_name, loaded.spec_hash) == (2, "run", "ab" * 32)
    assert loaded.history == _history()
    assert len(loaded.weights) == len(_weights())
    for got, want in zip(loaded.weights, _weights()):
        assert got.dtype.str == want.dtype.str and got.shape == want.shape
        assert np.array_equal(got, want)

    restored = FedAdam(fraction_fit=0.5, seed=99)  # another seed: the checkpoint's state wins
    restored.load_state_dict(loaded.strategy_state)
    for got, want in zip(restored.m + restored.v, strategy.m + strategy.v):
        np.testing.assert_array_equal(got, want)
    current = [np.zeros(4, np.float32), np.ones(2, np.float32)]
    for server_round in (2, 3, 4):  # the same clients are sampled from here on
        assert restored.configure_fit(server_round, current, CLIENTS) == \
            strategy.configure_fit(server_round, current, CLIENTS)


def test_saving_again_replaces_the_file_and_leaves_no_temporary(tmp_path):
    for server_round in (1, 2, 3):
        _save(tmp_path, server_round, 1_000 * server_round)
        assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).server_round == 3


def test_a_write_that_fails_keeps_the_previous_checkpoint_and_no_temporary(tmp_path):
    resource = pytest.importorskip("resource")
    _save(tmp_path, 1, 1_000)
    big = Checkpoint(server_round=2, weights=[np.ones(1 << 20, np.float32)], strategy_state={},
                     history={}, run_name=tmp_path.name, spec_hash="h")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A real failing write, as on a full disk: files of this process may not exceed 64 KiB
    # (Python ignores SIGXFSZ, so the write fails with EFBIG).
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        with pytest.raises(OSError):  # the server catches OSError: this checkpoint is lost
            save_checkpoint(tmp_path, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).server_round == 1


def test_a_folder_that_cannot_be_made_raises_oserror_and_writes_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(OSError):
        _save(blocker / "run", 1, 1_000)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_state_that_would_need_pickle_is_refused_before_any_file_is_made(tmp_path):
    with pytest.raises(TypeError, match="cannot be checkpointed without pickle"):
        save_checkpoint(tmp_path, Checkpoint(1, [np.zeros(1)], {"f": object()}, {}, "r", "h"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# A damaged file is one clear PyFedError
# ---------------------------------------------------------------------------------------------


def _damaged(tmp_path, damage) -> PyFedError:
    """The PyFedError loading a checkpoint gives once ``damage`` has changed its bytes."""
    path = save_checkpoint(tmp_path, Checkpoint(4, [np.ones(256, np.float32)], {}, {}, "r", "h"))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PyFedError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"cannot read checkpoint {path}")
    return caught.value


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.99, -1], ids=lambda k: f"keep-{k}")
def test_a_truncated_checkpoint_is_a_pyfed_error(tmp_path, keep):
    def truncate(data: bytes) -> bytes:
        return data[:int(len(data) * keep) if isinstance(keep, float) else keep]

    _damaged(tmp_path, truncate)


def test_a_checkpoint_with_a_flipped_byte_is_a_pyfed_error(tmp_path):
    def flip(data: bytes) -> bytes:  # in the middle of the weights' bytes: the CRC catches it
        index = data.index(np.ones(4, np.float32).tobytes()) + 5
        return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]

    assert "CRC" in str(_damaged(tmp_path, flip))


def test_garbage_a_missing_file_and_a_pickle_are_pyfed_errors(tmp_path):
    assert "pickle" in str(_damaged(tmp_path, lambda data: b"\x80\x04K\x01." * 100))
    _damaged(tmp_path, lambda data: b"PK\x03\x04" + b"\x00" * 200)
    with pytest.raises(PyFedError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "missing" / CHECKPOINT_FILE)


def _crafted(tmp_path, meta: dict, **arrays):
    path = tmp_path / CHECKPOINT_FILE
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return path


def test_another_format_or_a_document_missing_fields_is_a_pyfed_error(tmp_path):
    whole = {"format": 1, "round": 3, "run_name": "r", "spec_hash": "h", "history": {},
             "strategy": {}, "num_weights": 1, "num_strategy_arrays": 0}
    assert load_checkpoint(_crafted(tmp_path, whole, w_0=np.ones(2))).server_round == 3
    with pytest.raises(PyFedError, match="has format 2; this PyFed reads format 1"):
        load_checkpoint(_crafted(tmp_path, {**whole, "format": 2}, w_0=np.ones(2)))
    for field in ("round", "run_name", "num_weights", "history"):
        partial = {k: v for k, v in whole.items() if k != field}
        with pytest.raises(PyFedError, match=f"cannot read checkpoint .*{field}"):
            load_checkpoint(_crafted(tmp_path, partial, w_0=np.ones(2)))
    with pytest.raises(PyFedError, match="cannot read checkpoint .*w_1"):  # an array is missing
        load_checkpoint(_crafted(tmp_path, {**whole, "num_weights": 2}, w_0=np.ones(2)))
    with pytest.raises(PyFedError, match="cannot read checkpoint"):
        load_checkpoint(_crafted(tmp_path, {**whole, "round": "three"}, w_0=np.ones(2)))
    with pytest.raises(PyFedError, match="has format None"):  # not even an object
        load_checkpoint(_crafted(tmp_path, [1, 2, 3]))


# ---------------------------------------------------------------------------------------------
# Which checkpoint a resume picks
# ---------------------------------------------------------------------------------------------


def test_an_explicit_checkpoint_dir_wins_even_over_a_newer_run(tmp_path):
    chosen = _save(tmp_path / "elsewhere", 3, 1_000)
    _save(tmp_path / "logs" / "exp", 9, 9_000)
    assert find_checkpoint(tmp_path / "logs", "exp", checkpoint_dir=tmp_path / "elsewhere") == chosen
    assert find_checkpoint(tmp_path / "logs", checkpoint_dir=str(tmp_path / "elsewhere")) == chosen
    # A checkpoint_dir without a checkpoint means none, never "look elsewhere".
    assert find_checkpoint(tmp_path / "logs", "exp", checkpoint_dir=tmp_path / "empty") is None


def test_without_a_run_name_the_newest_run_under_the_logdir_is_picked(tmp_path):
    _save(tmp_path / "b-run", 2, 2_000)
    newest = _save(tmp_path / "a-run", 5, 5_000)
    _save(tmp_path / "c-run", 1, 1_000)
    _save(tmp_path / "deep" / "nested", 8, 8_000)  # only a run folder's own checkpoint counts
    (tmp_path / "not-a-run").mkdir()
    assert find_checkpoint(tmp_path) == newest
    assert find_checkpoint(str(tmp_path)) == newest


def test_no_checkpoint_anywhere_is_none(tmp_path):
    assert find_checkpoint(tmp_path) is None
    assert find_checkpoint(tmp_path / "missing") is None
    assert find_checkpoint(tmp_path / "missing", "exp") is None
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "other.npz").write_bytes(b"x")
    assert find_checkpoint(tmp_path, "exp") is None


def test_a_run_name_with_regex_characters_is_matched_literally(tmp_path):
    ours = _save(tmp_path / "lr=0.1 (a+b)", 2, 1_000)
    _save(tmp_path / "lr=0x1 (a+b)", 9, 9_000)    # "." must not match any character
    _save(tmp_path / "lr=0.1 (aab)", 9, 9_000)    # nor "+" repeat the "a"
    sibling = _save(tmp_path / "lr=0.1 (a+b)-2", 3, 2_000)
    assert find_checkpoint(tmp_path, "lr=0.1 (a+b)") == sibling
    os.utime(ours, ns=(5_000, 5_000))
    assert find_checkpoint(tmp_path, "lr=0.1 (a+b)") == ours
