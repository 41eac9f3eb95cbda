"""FL_Client: connection retries, clear refusals, and ending with the global model."""

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cliprocs import PYTHON, Processes
from procs import ROLES, free_port

from pyfed import FL_Client
from pyfed.errors import ConfigurationError, NetworkError


def test_every_client_ends_holding_the_global_model(digits_run):
    server_weights = digits_run["result"]["weights"]
    assert len(digits_run["clients"]) == 3
    for name, report in digits_run["clients"].items():
        assert report["rounds"] == 5, name
        assert report["weights"] == server_weights, f"{name} does not hold the final global model"


def test_clients_show_keras_progress(digits_run):
    # verbose=2 in roles.py: Keras prints one line per epoch, numbered by global epoch.
    output = digits_run["outputs"]["client_1"]
    assert "Epoch 1/2" in output and "Epoch 10/10" in output, output[-2000:]


def test_refused_connection_names_the_address():
    port = free_port()  # nothing listens here
    client = FL_Client("lonely", [[0.0]], [0], server_port=port, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        client.train()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "within 1 s" in message and "refused" in message
    assert time.monotonic() - started < 10


def test_client_rejects_mismatched_data_and_target():
    with pytest.raises(ConfigurationError, match="same length; received 3 and 2"):
        FL_Client("c", [[1], [2], [3]], [0, 1])


def test_a_client_with_a_different_model_is_refused_at_the_handshake(tmp_path):
    from conftest import tagged
    from procs import ProcessGroup

    port = free_port()
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "numpy-server", "--port", port, "--clients", 1, "--rounds", 1,
                   "--shapes", "3x4,4", "--logdir", tmp_path / "logs")
        group.role("wrong", "numpy-client", "--port", port, "--index", 9, "--shapes", "3x5,5",
                   "--logdir", tmp_path / "logs")
        assert group.wait("wrong", timeout=60) != 0
        wrong = group.output("wrong")
        assert "ModelMismatchError" in wrong and "model mismatch" in wrong, wrong[-2000:]
        assert "spec hash" in wrong
        # The server keeps serving: a matching client still trains.
        group.role("right", "numpy-client", "--port", port, "--index", 1, "--shapes", "3x4,4",
                   "--logdir", tmp_path / "logs")
        assert group.wait("right", timeout=60) == 0, group.dump()
        assert group.wait("server", timeout=60) == 0, group.dump()
        assert tagged(group.output("right"), "CLIENT")["rounds"] == 1


# ---------------------------------------------------------------------------------------------
# fit_callbacks (issue 11): Keras callbacks given to the client reach its model's fit every round.
# ---------------------------------------------------------------------------------------------


def test_fit_callbacks_see_every_epoch_of_every_round(tmp_path):
    from procs import ProcessGroup

    port = free_port()
    epochs = tmp_path / "epochs.jsonl"
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "server", "--port", port, "--clients", 1, "--rounds", 3,
                   "--logdir", tmp_path / "logs")
        group.role("client", "client", "--port", port, "--clients", 1, "--index", 1,
                   "--epochs", 2, "--logdir", tmp_path / "logs", "--epoch-log", epochs)
        codes = group.wait_all(timeout=300)
        assert codes == {"server": 0, "client": 0}, group.dump()
    records = [json.loads(line) for line in epochs.read_text().splitlines()]
    # 3 rounds of 2 epochs, numbered across rounds as the client's TensorBoard curves are.
    assert [record["epoch"] for record in records] == [0, 1, 2, 3, 4, 5], records
    assert all("loss" in record["logs"] and "accuracy" in record["logs"] for record in records)


def test_fit_callbacks_are_refused_for_a_model_that_is_not_keras():
    from pyfed.models import SoftmaxRegression

    with pytest.raises(ConfigurationError, match="c: fit_callbacks are Keras callbacks, passed "
                                                 "to a Keras model's fit; this model is a "
                                                 "SoftmaxRegression"):
        FL_Client("c", np.zeros((4, 4)), np.zeros(4, int), model=SoftmaxRegression(4, 3),
                  fit_callbacks=[object()])


# ---------------------------------------------------------------------------------------------
# A hostile server (issue 10, A7): what it sends never becomes a path outside the logdir, never
# overwrites the model with weights of another shape or non-finite values, and never sets the
# training config out of range. The real `pyfed client` CLI against hostile_roles.py
# evil-server; each refusal is exit status 2, one line, no traceback, and an ERROR to the server.
# ---------------------------------------------------------------------------------------------

HOSTILE = Path(__file__).with_name("hostile_roles.py")
PYFED = [sys.executable, "-m", "pyfed"]


def wait_for_line(procs, name: str, pattern: str, timeout: float) -> re.Match:
    """The first match of ``pattern`` in ``name``'s stdout, polled for at most ``timeout``."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        match = regex.search(procs.out(name))
        if match:
            return match
        if procs.procs[name].poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{name} did not print {pattern!r}\n{procs.dump()}")
        time.sleep(0.05)


def every_path(root: Path, skip: set) -> set:
    return {p for p in root.rglob("*") if not any(p == s or s in p.parents for s in skip)}


def save_client_data(folder: Path, x, y) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)


def digits_like(n: int = 100, features: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, features), dtype=np.float32), np.arange(n) % 10


def cli_client(name: str, port, *extra) -> list:
    return [*PYFED, "client", "--name", name, "--data", "x.npy", "--target", "y.npy",
            "--port", port, "--logdir", "logs", "--connect-timeout", 30, *extra]


def run_against_evil_server(tmp_path: Path, mode: str, *options) -> dict:
    """One CLI client against evil-server ``mode``; what both printed, and every new path."""
    work = tmp_path / "work"
    save_client_data(work, *digits_like())
    procs_dir = tmp_path / "procs"
    before = every_path(tmp_path, {procs_dir})
    with Processes(procs_dir) as procs:
        procs.start("server", [PYTHON, HOSTILE, "evil-server", "--port", 0, "--mode", mode,
                               "--timeout", 60, *options], cwd=tmp_path)
        port = wait_for_line(procs, "server", r"^READY (\d+)$", 20).group(1)
        procs.start("client", cli_client("c1", port), cwd=work)
        code = procs.wait("client", 60)
        procs.wait("server", 30)
        outcome = {"code": code, "out": procs.out("client"), "err": procs.err("client"),
                   "server": procs.out("server")}
    outcome["new_paths"] = every_path(tmp_path, {procs_dir}) - before
    outcome["client_errors"] = [json.loads(line.split(" ", 1)[1])
                                for line in outcome["server"].splitlines()
                                if line.startswith("CLIENT_ERROR ")]
    return outcome


REFUSALS = {
    "traversal": (["--run-name", "../../escaped"],
                  "the server's run name must be one folder name, without '/'"),
    "bad-weights-shape": (["--fault", "shape"],
                          "tensor 0 (weight_0) has shape [63, 10]; the model has [64, 10]"),
    "bad-weights-count": (["--fault", "count"], "carries 1 weight tensors; the model has 2"),
    "bad-weights-dtype": (["--fault", "dtype"], "has dtype <f8; the model has <f4"),
    "bad-weights-nan": (["--fault", "nan"], "tensor 0 (weight_0) contains nan"),
    "bad-weights-inf": (["--fault", "inf"], "tensor 1 (weight_1) contains -inf"),
    "bad-config-epochs": (["--fit-config", '{"epochs": 0}'],
                          "config epochs must be a whole number in [1, 10000]; received 0"),
    "bad-config-epochs-string": (["--fit-config", '{"epochs": "2"}'],
                                 "config epochs must be a whole number in [1, 10000]; "
                                 "received '2'"),
    "bad-config-batch": (["--fit-config", '{"batch_size": 1073741824}'],
                         "config batch_size must be a whole number in [1, 16777216]"),
    "bad-config-lr": (["--fit-config", '{"lr": -0.5}'],
                      "config lr must be a finite number > 0; received -0.5"),
    "bad-config-lr-string": (["--fit-config", '{"lr": "fast"}'],
                             "config lr must be a finite number > 0; received 'fast'"),
    "bad-round": (["--fit-round", "7"], "the server's FIT is for round 7; this run has rounds 1 to 2"),
    "evaluate-without-data": ([], "asks this client to evaluate, but it holds no evaluation data"),
    "huge-model": ([], "bad SoftmaxRegression description: n_features must be a whole number in "
                       "[1, 268435456]; received 1099511627776"),
    "wrong-id": ([], "the server's WELCOME is for client 'someone-else', not 'c1'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS) + ["abs-path"])
def test_a_hostile_server_gets_one_clear_refusal_and_no_file_outside_the_logdir(tmp_path, case):
    if case == "abs-path":
        target = tmp_path / "abs_target"
        mode, options, expected = "abs-path", ["--run-name", str(target)], "must be one folder name"
    else:
        options, expected = REFUSALS[case]
        mode = "-".join(case.split("-")[:2]) if case.startswith("bad-") else case
    outcome = run_against_evil_server(tmp_path, mode, *options)
    logs = tmp_path / "work" / "logs"
    outside = {p for p in outcome["new_paths"] if p != logs and logs not in p.parents
               and p not in (tmp_path / "work" / "x.npy", tmp_path / "work" / "y.npy")}
    report = f"{outcome}"
    assert outside == set(), report
    assert outcome["code"] == 2, report
    lines = outcome["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyfed client: error: c1: "), report
    assert expected in lines[0], report
    assert "Traceback" not in outcome["out"] + outcome["err"], report
    # The client told the server why before leaving.
    assert any(expected in e["reason"] for e in outcome["client_errors"]), report


def test_an_honest_run_name_with_odd_characters_stays_one_folder_in_the_logdir(tmp_path):
    from test_logs import scalars

    from pyfed.safe_text import path_component

    outcome = run_against_evil_server(tmp_path, "honest", "--rounds", 2)
    assert outcome["code"] == 0, outcome
    assert "c1: round 1/2 · training 1 epoch on 100 examples" in outcome["out"], outcome
    assert "c1: round 2/2 · training 1 epoch on 100 examples" in outcome["out"], outcome
    logs = tmp_path / "work" / "logs"
    assert [p.name for p in logs.iterdir()] == [path_component("exp 1: evil")]
    curves = scalars(logs / path_component("exp 1: evil") / "clients" / "c1")
    assert [step for step, _ in curves["epoch_loss"]] == [0, 1]


# ---------------------------------------------------------------------------------------------
# Wrong data fails before round 1 (issue 10, B2): one line naming both shapes, exit status 2,
# and the server logs why the client left. A real Keras server (pyfed server) and CLI clients.
# ---------------------------------------------------------------------------------------------

WRONG_DATA = {
    "c_wide": (digits_like(features=32),
               "c_wide: data has 32 features per example; the model expects 64 "
               "(input shape (None, 64))"),
    "c_strings": ((digits_like()[0], np.array([str(i % 10) for i in range(100)])),
                  "c_strings: labels are strings (e.g. '0'); the model expects class "
                  "numbers 0..9 (output shape (None, 10)). Map them to numbers first "
                  "(e.g. sklearn.preprocessing.LabelEncoder)"),
    "c_classes": ((digits_like()[0], np.arange(100) % 20),
                  "c_classes: labels include 10 (they range over 0..19); the model expects "
                  "class numbers 0..9 (output shape (None, 10))"),
}


def test_wrong_data_fails_before_round_one_with_one_line_and_the_server_logs_why(tmp_path):
    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        # 4 clients are never all there: the server waits, and keeps serving, while the three
        # wrong ones join, are checked against its Keras model, and leave.
        procs.start("server", [*PYFED, "server", "--model", "pyfed.data:digits_model",
                               "--clients", 4, "--rounds", 1, "--port", port,
                               "--logdir", "logs"], cwd=tmp_path)
        for name, ((x, y), _) in WRONG_DATA.items():
            save_client_data(tmp_path / name, x, y)
            procs.start(name, cli_client(name, port, "--connect-timeout", 120),
                        cwd=tmp_path / name)
        codes = {name: procs.wait(name, 180) for name in WRONG_DATA}
        deadline = time.monotonic() + 30
        while (procs.err("server").count("ended the session") < len(WRONG_DATA)
               and time.monotonic() < deadline):
            time.sleep(0.1)
        server_log = procs.err("server")
        outputs = {name: (procs.out(name), procs.err(name)) for name in WRONG_DATA}
    for name, (_, expected) in WRONG_DATA.items():
        out, err = outputs[name]
        assert codes[name] == 2, (name, out, err)
        assert err.strip() == f"pyfed client: error: {expected}", (name, err)
        assert "Traceback" not in out + err and "Epoch 1" not in out, (name, out)
        # The server's log names the client and its reason, on one line of its own.
        lines = [line for line in server_log.splitlines() if f"{name} ended the session" in line]
        assert len(lines) == 1 and lines[0].endswith(expected), server_log
    assert "Traceback" not in server_log, server_log


# ---------------------------------------------------------------------------------------------
# Retrying is said, every few seconds (B5), and a stopped server ends its clients at once, or
# is waited for when asked (B7). Numpy servers (roles.py softmax-server) and CLI clients.
# ---------------------------------------------------------------------------------------------

WAITING = r"^c1: waiting for the server at 127\.0\.0\.1:{port} \((.+)\); retrying for (\d+) s more$"


def softmax_server(port, logdir, *extra) -> list:
    return [PYTHON, ROLES, "softmax-server", "--port", port, "--clients", 3, "--logdir", logdir,
            *extra]


def test_a_client_started_before_the_server_says_it_is_waiting_every_few_seconds(tmp_path):
    port = free_port()
    save_client_data(tmp_path / "c1", *digits_like())
    with Processes(tmp_path / "procs") as procs:
        procs.start("c1", cli_client("c1", port, "--connect-timeout", 60), cwd=tmp_path / "c1")
        pattern = WAITING.format(port=port)
        deadline = time.monotonic() + 30
        while len(re.findall(pattern, procs.out("c1"), re.M)) < 2 and time.monotonic() < deadline:
            assert procs.procs["c1"].poll() is None, procs.dump()
            time.sleep(0.1)
        waiting = re.findall(pattern, procs.out("c1"), re.M)
        procs.start("server", softmax_server(port, tmp_path / "logs", "--clients", 1,
                                             "--rounds", 1), cwd=tmp_path)
        codes = {name: procs.wait(name, 60) for name in ("c1", "server")}
        out = procs.out("c1")
    assert len(waiting) >= 2, out
    assert "refused" in waiting[0][0] and int(waiting[0][1]) > int(waiting[1][1]), waiting
    assert codes == {"c1": 0, "server": 0}, out
    assert "c1: trained 1 rounds; server said completed" in out, out


def start_federation(procs, tmp_path: Path, port: int, *client_options) -> None:
    procs.start("server", softmax_server(port, tmp_path / "logs", "--rounds", 100_000),
                cwd=tmp_path)
    for i in (1, 2, 3):
        name = f"c{i}"
        x, y = digits_like(seed=i)
        save_client_data(tmp_path / name, x, y)
        procs.start(name, [*cli_client(name, port, *client_options), "--epochs", 1],
                    cwd=tmp_path / name)
    wait_for_line(procs, "server", r"^round 3/100000 · ", 60)


def test_clients_exit_at_once_with_one_line_when_the_server_is_stopped(tmp_path):
    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        start_federation(procs, tmp_path, port)
        os.kill(procs.procs["server"].pid, signal.SIGTERM)
        assert procs.wait("server", 30) == 130, procs.dump()
        # Generous, yet far below the ~37 s of reconnection attempts this replaced.
        codes = {name: procs.wait(name, 20) for name in ("c1", "c2", "c3")}
        outputs = {name: (procs.out(name), procs.err(name)) for name in codes}
    for name, (out, err) in outputs.items():
        assert codes[name] == 2, (name, out, err)
        assert re.fullmatch(rf"pyfed client: error: {name}: the server stopped: .+", err.strip()), err
        assert "reconnecting" not in out + err and "Traceback" not in out + err, (out, err)
        assert re.search(rf"^{name}: round \d+/100000 · training 1 epoch on 100 examples$", out,
                         re.M), out


def test_clients_asked_to_wait_for_resume_reconnect_to_the_resumed_server(tmp_path):
    from pyfed.server.checkpoint import CHECKPOINT_FILE, load_checkpoint

    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        procs.start("server", softmax_server(port, tmp_path / "logs", "--rounds", 40,
                                             "--run-name", "exp"), cwd=tmp_path)
        for i in (1, 2, 3):
            name = f"c{i}"
            save_client_data(tmp_path / name, *digits_like(seed=i))
            procs.start(name, [*cli_client(name, port, "--wait-for-resume"), "--epochs", 1],
                        cwd=tmp_path / name)
        wait_for_line(procs, "server", r"^round 3/40 · ", 60)
        os.kill(procs.procs["server"].pid, signal.SIGTERM)
        assert procs.wait("server", 30) == 130, procs.dump()
        for name in ("c1", "c2", "c3"):
            wait_for_line(procs, name, rf"^{name}: the server stopped \(.+\); waiting up to 30 s "
                                       "for it to resume$", 20)
        stopped_at = load_checkpoint(tmp_path / "logs" / "exp" / CHECKPOINT_FILE).server_round
        procs.start("resumed", softmax_server(port, tmp_path / "logs", "--rounds", 40,
                                              "--run-name", "exp", "--resume"), cwd=tmp_path)
        codes = {name: procs.wait(name, 90) for name in ("resumed", "c1", "c2", "c3")}
        outputs = {name: procs.out(name) + procs.err(name) for name in codes}
    assert codes == {"resumed": 0, "c1": 0, "c2": 0, "c3": 0}, outputs
    result = json.loads(next(line for line in outputs["resumed"].splitlines()
                             if line.startswith("RESULT "))[7:])
    assert result["history"]["rounds"] == list(range(1, 41)), result["history"]["rounds"]
    for name in ("c1", "c2", "c3"):
        assert f"{name}: round {stopped_at + 1}/40 · training" in outputs[name], outputs[name]
        assert f"{name}: trained" in outputs[name] and "Traceback" not in outputs[name]


# -- the checks themselves, without sockets ----------------------------------------------------

def test_training_config_checks_what_the_adapters_read_and_passes_the_rest_on():
    from pyfed.client.checks import training_config
    from pyfed.errors import ProtocolError

    config = training_config({"epochs": 3, "batch_size": 64, "lr": 0.01, "proximal_mu": 0.0,
                              "max_iter": 50, "lr_schedule": "cosine", "round": 99,
                              "verbose": 1, "compression": {"codec": "none"}, "epochs_": None,
                              "batch_size": None}, "FIT")
    # The server's "round" and "verbose" are never taken; None means "not set".
    assert config == {"epochs": 3, "lr": 0.01, "proximal_mu": 0.0, "max_iter": 50,
                      "lr_schedule": "cosine", "compression": {"codec": "none"}}
    bad = [({"epochs": 0}, "epochs must be a whole number in [1, 10000]; received 0"),
           ({"epochs": 10_001}, "received 10001"), ({"epochs": True}, "received True"),
           ({"epochs": 2.0}, "received 2.0"), ({"batch_size": 2**24 + 1}, "[1, 16777216]"),
           ({"max_iter": -1}, "max_iter must be"), ({"lr": 0}, "lr must be a finite number > 0"),
           ({"lr": float("nan")}, "received nan"), ({"lr": float("inf")}, "received inf"),
           ({"lr": [0.1]}, "received [0.1]"), ({"proximal_mu": -0.1}, "proximal_mu must be a "
                                                                      "finite number >= 0")]
    for value, message in bad:
        with pytest.raises(ProtocolError, match=re.escape(f"FIT: config ") + ".*" +
                           re.escape(message)):
            training_config(value, "FIT")


def test_check_weights_names_the_tensor_and_what_was_agreed():
    from pyfed.client.checks import check_weights
    from pyfed.errors import ProtocolError
    from pyfed.wire.spec import spec_of_arrays

    good = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32), np.zeros(2, np.int64)]
    spec = spec_of_arrays(good)
    check_weights(good, spec, "FIT")
    big = np.full(3 << 20, 3e38, np.float32)  # finite, though its float32 sum would overflow
    check_weights([big], spec_of_arrays([big]), "FIT")
    cases = [(good[:2], "FIT carries 2 weight tensors; the model has 3"),
             ([good[0].T, *good[1:]], "FIT: tensor 0 (weight_0) has shape [3, 4]; the model has [4, 3]"),
             ([good[0], good[1].astype(np.float16), good[2]], "tensor 1 (weight_1) has dtype <f2; "
                                                              "the model has <f4"),
             ([good[0], [0.0, 0.0, 0.0], good[2]], "tensor 1 (weight_1) is a list"),
             ([np.where(np.eye(4, 3) > 0, np.inf, 0).astype(np.float32), *good[1:]],
              "tensor 0 (weight_0) contains inf; every weight must be finite")]
    for weights, message in cases:
        with pytest.raises(ProtocolError, match=re.escape(message)):
            check_weights(weights, spec, "FIT")
    late_nan = big.copy()
    late_nan[-1] = np.nan  # in the last chunk
    with pytest.raises(ProtocolError, match="contains nan"):
        check_weights([late_nan], spec_of_arrays([big]), "FIT")
