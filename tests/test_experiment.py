"""FL_Experiment end to end: it spawns a real server process and real client processes."""

import json
import multiprocessing
import re

import numpy as np
import pytest

from pyfed import data
from pyfed.errors import ConfigurationError, PyFedError
from pyfed.experiment import FINAL_WEIGHTS, FL_Experiment


def digits_parts(num_clients=3):
    x, y = data.load_digits()
    return data.split_for_clients(x, y, num_clients, seed=1)


def test_experiment_trains_and_returns_the_global_model(tmp_path, capfd):
    clients_x, clients_y, test_x, test_y = digits_parts()
    experiment = FL_Experiment(3, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs")
    model = data.digits_model()
    before = [w.copy() for w in model.get_weights()]
    trained, history = experiment.run(model, rounds=4, epochs=2, batch_size=32, lr=0.005,
                                      optimizer="adam", loss="sparse_categorical_crossentropy",
                                      metrics=["accuracy"])
    assert trained is model
    assert any(not np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))
    assert history.rounds == [1, 2, 3, 4]
    assert history.history["participants"] == [3, 3, 3, 3]
    assert experiment.test_results["accuracy"] >= 0.90
    # The returned model really is the server's final model: same accuracy when re-evaluated.
    predictions = trained.predict(test_x, verbose=0).argmax(axis=1)
    assert abs((predictions == test_y).mean() - experiment.test_results["accuracy"]) < 1e-6
    assert (experiment.run_dir / FINAL_WEIGHTS).is_file()
    assert sorted(p.name for p in (experiment.run_dir / "clients").iterdir()) == \
        ["client_1", "client_2", "client_3"]
    out = capfd.readouterr().out
    assert "round 4/4 · 3 clients" in out and "test on" in out and "accuracy" in out
    assert multiprocessing.active_children() == []  # every child was reaped
    # TensorBoard's HParams hold the clients' settings, which only FL_Experiment knows.
    from test_logs import hparams_of, plugin_data

    name, hparams, _ = hparams_of(plugin_data(experiment.run_dir / "server"))
    assert name == experiment.run_dir.name
    assert {"epochs": 2, "batch_size": 32, "lr": 0.005, "optimizer": "adam", "clients": 3,
            "rounds": 4, "strategy": "FedAvg", "partition": "as given"}.items() <= hparams.items()
    from test_logs import scalars  # and the final test, as FL_Server.test() logs it

    final = scalars(experiment.run_dir / "server" / "final")
    assert final["test/accuracy"] == [(4, pytest.approx(experiment.test_results["accuracy"]))]


def test_a_failing_client_stops_the_experiment_with_its_name(tmp_path):
    clients_x, clients_y, test_x, test_y = digits_parts(2)
    clients_x[1] = clients_x[1][:, :10]  # wrong feature count: Keras fails inside client_2
    experiment = FL_Experiment(2, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240)
    with pytest.raises(PyFedError, match=r"pyfed-client_2 (exited with code 1|\(exit code 1\) failed)"):
        experiment.run(data.digits_model(), rounds=2, epochs=1, batch_size=32, lr=0.005,
                       optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert multiprocessing.active_children() == []


def test_experiment_checks_its_arguments():
    with pytest.raises(ConfigurationError, match="for 3 clients; received 2 data and 2 target"):
        FL_Experiment(3, [1, 2], [1, 2], None, None)


def test_fit_callbacks_reach_every_client_process(tmp_path):
    from roles import epoch_recorder

    clients_x, clients_y, test_x, test_y = digits_parts(2)
    # Each client process gets its own copy of the callback, and both append to this file.
    experiment = FL_Experiment(2, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240,
                               fit_callbacks=[epoch_recorder(tmp_path / "epochs.jsonl")])
    experiment.run(data.digits_model(), rounds=2, epochs=2, batch_size=32, lr=0.005,
                   optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    lines = (tmp_path / "epochs.jsonl").read_text().splitlines()
    # 2 clients x 2 rounds x 2 epochs, numbered across rounds.
    assert sorted(json.loads(line)["epoch"] for line in lines) == [0, 0, 1, 1, 2, 2, 3, 3], lines


def test_fit_callbacks_of_an_experiment_are_checked_before_any_process_starts():
    from pyfed.models import SoftmaxRegression

    x, y = np.zeros((4, 4), np.float32), np.zeros(4, int)
    experiment = FL_Experiment(1, [x], [y], None, None, fit_callbacks=[object()])
    with pytest.raises(ConfigurationError, match="this model is a SoftmaxRegression"):
        experiment.run(SoftmaxRegression(4, 3), rounds=1)
    assert experiment.run_dir is None  # no server was started
    with pytest.raises(ConfigurationError, match="fit_callbacks is given twice"):
        FL_Experiment(1, [x], [y], None, None, fit_callbacks=[object()],
                      client_options={"fit_callbacks": []})


# The README's FL_Experiment snippet, pasted into a script as a new user does: no
# `if __name__ == "__main__":` guard. The first line marks every run of the top-level code.
README_SCRIPT = '''\
import os
print("TOP-LEVEL", os.getpid(), flush=True)
from pyfed.experiment import FL_Experiment
from pyfed.data import load_digits, split_for_clients
import tensorflow as tf
{extra}
data, target = load_digits()
clients_data, clients_target, server_data, server_target = split_for_clients(data, target, 2)
model = tf.keras.models.Sequential()
model.add(tf.keras.layers.InputLayer((64,)))
model.add(tf.keras.layers.Dense(10, activation="softmax"))

exp = FL_Experiment(num_clients=2, clients_data=clients_data, clients_target=clients_target,
                    server_data=server_data, server_target=server_target, port={port})
model, history = exp.run(model=model, rounds=1, epochs=1, batch_size=32, lr=0.005,
                         optimizer=tf.optimizers.Adam, loss={loss},
                         metrics=["accuracy"])
print(exp.test_results)
'''

TEST_LINE = re.compile(r"^test on \d+ server examples · loss [\d.]+ · accuracy [\d.]+$", re.M)


def run_readme_script(tmp_path, env, extra="", loss='"sparse_categorical_crossentropy"'):
    """Run the snippet with the venv's python, as `python script.py`; return (stdout, stderr)."""
    from cliprocs import PYTHON, Processes, free_port

    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "readme_experiment.py"
    script.write_text(README_SCRIPT.format(port=free_port(), extra=extra, loss=loss))
    with Processes(tmp_path / "procs") as procs:
        procs.start("script", [PYTHON, script], cwd=tmp_path, env=env)
        assert procs.wait("script", 240) == 0, procs.dump()
        out = procs.out("script")
        err = (procs.log_dir / "script.err").read_text(errors="replace")  # unfiltered
    return out, err


def test_readme_snippet_runs_without_a_main_guard(tmp_path):
    from cliprocs import child_env

    out, err = run_readme_script(tmp_path, child_env())
    assert TEST_LINE.search(out), out + err
    assert "round 1/1 · 2 clients" in out, out
    # The user's main module ran once: the children never re-imported it.
    assert len(re.findall(r"^TOP-LEVEL \d+$", out, re.M)) == 1, out
    from cliprocs import without_tf_noise

    assert without_tf_noise(err).strip() == "", err  # no traceback, no runpy warning


# A loss defined in the script's __main__: cloudpickle hands it to the clients by value, and it
# reports the log level each process (the script itself, each client) really runs with.
LEVEL_LOSS = '''
def level_loss(y_true, y_pred):
    print("LOSS-LEVEL", os.getpid(), os.environ.get("TF_CPP_MIN_LOG_LEVEL"), flush=True)
    return tf.keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
'''


def loss_levels(out: str) -> dict[int, set[str]]:
    levels: dict[int, set[str]] = {}
    for pid, level in re.findall(r"^LOSS-LEVEL (\d+) (\S+)$", out, re.M):
        levels.setdefault(int(pid), set()).add(level)
    return levels


def test_tensorflow_start_up_is_quiet_unless_the_user_set_the_level(tmp_path):
    from cliprocs import TF_NOISE, child_env

    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    out, err = run_readme_script(tmp_path / "unset", env, extra=LEVEL_LOSS, loss="level_loss")
    assert TEST_LINE.search(out), out + err
    noise = [line for line in (out + err).splitlines() if TF_NOISE.search(line)]
    assert noise == [], "\n".join(noise)
    assert err.strip() == "", err  # nothing else either: zero lines on stderr
    parent = int(re.search(r"^TOP-LEVEL (\d+)$", out, re.M).group(1))
    levels = loss_levels(out)
    assert parent in levels and len(levels) == 3, out  # the script and both clients trained
    assert set().union(*levels.values()) == {"2"}, levels  # PyFed's default, in every process

    # A user who asks for TensorFlow's logs gets them: their setting is not overridden.
    out, err = run_readme_script(tmp_path / "verbose", child_env(TF_CPP_MIN_LOG_LEVEL=0),
                                 extra=LEVEL_LOSS, loss="level_loss")
    assert TEST_LINE.search(out), out + err
    levels = loss_levels(out)
    assert len(levels) == 3 and set().union(*levels.values()) == {"0"}, levels
    assert TF_NOISE.search(err), err  # TensorFlow's own lines, as the user asked


def test_an_experiment_runs_an_asynchronous_strategy_as_it_is(tmp_path):
    """FL_Experiment needs no change for FedBuff: the strategy goes to the server process, the
    clients train as always, and rounds count versions."""
    from pyfed.models import SoftmaxRegression
    from pyfed.strategy import FedBuff

    clients_x, clients_y, test_x, test_y = digits_parts(3)
    experiment = FL_Experiment(3, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240,
                               strategy=FedBuff(buffer_size=2))
    model, history = experiment.run(SoftmaxRegression(64, 10), rounds=10, epochs=2,
                                    batch_size=32, lr=0.5)
    assert history.rounds == list(range(1, 11))
    assert history.history["participants"] == [2] * 10  # buffer_size updates per version
    assert all(len(pairs) == 2 for pairs in history.history["updates"])
    assert sum(history.history["client_updates"][-1].values()) == 20
    # Which updates arrive stale depends on timing (the parties now start at once), and SGD
    # at lr 0.5 from a stale base swings: 6 versions once ended at 0.77. It learns: 0.1 is chance.
    assert experiment.test_results["accuracy"] > 0.7
    assert multiprocessing.active_children() == []


def test_an_experiment_runs_secure_aggregation_as_it_is(tmp_path):
    """SecureAggregation needs no change to FL_Experiment or FL_Client: WELCOME tells the
    clients, each round runs SecAgg's stages, and the model still learns digits."""
    from pyfed.models import SoftmaxRegression
    from pyfed.privacy import SecureAggregation
    from pyfed.strategy import FedAvg

    clients_x, clients_y, test_x, test_y = digits_parts(3)
    experiment = FL_Experiment(3, clients_x, clients_y, test_x, test_y, port=0,
                               logdir=tmp_path / "logs", verbose=0, timeout=240,
                               strategy=SecureAggregation(FedAvg()))
    model, history = experiment.run(SoftmaxRegression(64, 10), rounds=4, epochs=2,
                                    batch_size=32, lr=0.5)
    assert history.rounds == [1, 2, 3, 4]
    assert history.history["participants"] == [3] * 4
    assert experiment.test_results["accuracy"] > 0.8
    assert multiprocessing.active_children() == []
