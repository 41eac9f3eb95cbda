"""Checkpoint files: which one a resume picks, and which leftovers a start removes."""

import os

import numpy as np

from pyfed.server.checkpoint import (CHECKPOINT_FILE, Checkpoint, find_checkpoint, load_checkpoint,
                              remove_orphaned_temporaries, save_checkpoint)


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
