"""pyfed.callbacks: the hooks a user's ServerCallback sees in a real run, in order; a callback
that raises does not break the run; the built-ins are replaceable.

Real server and client processes over loopback (numpy SoftmaxRegression on digits).
"""

import json

from conftest import tagged
from procs import ProcessGroup, free_port


def run_with_callbacks(tmp_path, *, clients=2, rounds=2, centralized=True):
    port = free_port()
    log = tmp_path / "callbacks.jsonl"
    logdir = tmp_path / "logs"
    server_args = ["softmax-server", "--port", port, "--clients", clients, "--rounds", rounds,
                   "--logdir", logdir, "--callback-log", log]
    if centralized:
        server_args.append("--centralized")
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", *server_args)
        for i in range(1, clients + 1):
            group.role(f"client_{i}", "softmax-client", "--port", port, "--clients", clients,
                       "--index", i, "--logdir", logdir)
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        result["server_log"] = group.output("server")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return result, events


def test_a_user_callback_sees_every_hook_in_order_in_a_real_run(tmp_path):
    result, events = run_with_callbacks(tmp_path, clients=2, rounds=2)
    names = [event[0] for event in events]
    expected_round = ["on_round_begin", "on_fit_result", "on_fit_result", "on_evaluate_end",
                      "on_round_end"]
    assert names == ["on_train_begin", *expected_round, *expected_round, "on_train_end"], names
    begins = [e for e in events if e[0] == "on_round_begin"]
    assert begins == [["on_round_begin", 1, ["client_1", "client_2"]],
                      ["on_round_begin", 2, ["client_1", "client_2"]]]
    for server_round in (1, 2):
        fits = [e for e in events if e[0] == "on_fit_result" and e[1] == server_round]
        assert sorted(e[2] for e in fits) == ["client_1", "client_2"]
        assert all(e[3] > 0 and "loss" in e[4] for e in fits), fits
    # on_evaluate_end carries the centralized test results; on_round_end comes after the
    # built-in History recorded the round (the user's callbacks run after the built-ins).
    assert [e for e in events if e[0] == "on_evaluate_end"][0][2] == ["test_accuracy", "test_loss"]
    assert [e for e in events if e[0] == "on_round_end"] == [["on_round_end", 1, 2, 1],
                                                            ["on_round_end", 2, 2, 2]]
    assert events[-1] == ["on_train_end", [1, 2], True]
    assert result["history"]["rounds"] == [1, 2]


def test_a_callback_that_raises_is_logged_and_the_run_goes_on(tmp_path):
    result, events = run_with_callbacks(tmp_path, clients=2, rounds=2, centralized=False)
    # The Broken callback raised in every hook it has; each was logged with its name, and the
    # Recorder after it still saw every hook, and the run completed.
    log = result["server_log"]
    for hook in ("on_train_begin", "on_round_begin", "on_fit_result", "on_round_end",
                 "on_train_end"):
        assert f"callback Broken.{hook} raised RuntimeError: a user's callback bug" in log, hook
    assert [e[0] for e in events].count("on_round_end") == 2
    assert result["history"]["history"]["participants"] == [2, 2]
    assert result["test"]["accuracy"] > 0.5


def test_the_builtins_come_first_and_an_instance_of_their_class_replaces_one():
    import pytest

    from pyfed import FL_Server
    from pyfed.callbacks import (Checkpointer, History, ProgressPrinter, ServerCallback,
                                 TensorBoard)
    from pyfed.errors import ConfigurationError
    from pyfed.models import SoftmaxRegression

    class Mine(ServerCallback):
        pass

    class QuietCheckpoints(Checkpointer):
        pass

    mine, checkpoints = Mine(), QuietCheckpoints()
    server = FL_Server(SoftmaxRegression(64, 10), 1, 1, port=0,
                       callbacks=[mine, checkpoints])
    kinds = [type(c) for c in server.callbacks]
    assert kinds == [History, TensorBoard, QuietCheckpoints, ProgressPrinter, Mine]
    assert server.callbacks.find(Checkpointer) is checkpoints
    assert server.history is server.callbacks.find(History)  # train() returns this object

    quiet = FL_Server(SoftmaxRegression(64, 10), 1, 1, port=0, verbose=0)
    assert [type(c) for c in quiet.callbacks] == [History, TensorBoard, Checkpointer]
    with pytest.raises(ConfigurationError, match="ServerCallback objects; received function"):
        FL_Server(SoftmaxRegression(64, 10), 1, 1, port=0, callbacks=[lambda: None])
