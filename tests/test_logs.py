"""TensorBoard output, read back with TensorBoard's own EventAccumulator."""

import os
import sys

import numpy as np
import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyfed.tracking.logs import RunLogger, ScalarWriter, new_run_dir, round_line
from pyfed.safe_text import path_component

SERVER_TAGS = {"fit/loss", "fit/accuracy", "round/participants", "round/seconds",
               "round/bytes_in", "round/bytes_out"}


def scalars(directory):
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_one_run_folder_with_server_and_every_client(digits_run):
    runs = [p for p in digits_run["logdir"].iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # clients on the server's machine add no second run folder
    run = runs[0]
    assert sorted(p.name for p in (run / "clients").iterdir()) == ["client_1", "client_2", "client_3"]
    assert (run / "server").is_dir()


def test_server_scalars_per_round(digits_run):
    run = next(p for p in digits_run["logdir"].iterdir() if p.is_dir())
    server = scalars(run / "server")
    assert SERVER_TAGS <= set(server), sorted(server)
    for tag in SERVER_TAGS:
        assert [step for step, _ in server[tag]] == [1, 2, 3, 4, 5], tag
    assert [value for _, value in server["round/participants"]] == [3.0] * 5
    history = digits_run["result"]["history"]["history"]
    assert [round(v, 5) for _, v in server["fit/loss"]] == [round(v, 5) for v in history["fit_loss"]]


def test_client_curves_are_continuous_in_global_epochs(digits_run):
    run = next(p for p in digits_run["logdir"].iterdir() if p.is_dir())
    for name in ("client_1", "client_2", "client_3"):
        directory = run / "clients" / name
        # One event file per client on this machine: no curve is written twice.
        assert len([f for f in os.listdir(directory) if "tfevents" in f]) == 1
        curves = scalars(directory)
        assert {"epoch_loss", "epoch_accuracy"} <= set(curves), curves.keys()
        # 5 rounds x 2 epochs: steps 0..9, each exactly once.
        assert [step for step, _ in curves["epoch_loss"]] == list(range(10)), name
        assert curves["epoch_accuracy"][-1][1] > 0.8


def test_run_folders_never_replace_older_ones(tmp_path):
    first = new_run_dir(tmp_path, "exp")
    (first / "keep.txt").write_text("old")
    second = new_run_dir(tmp_path, "exp")
    third = new_run_dir(tmp_path, "exp")
    assert [first.name, second.name, third.name] == ["exp", "exp-2", "exp-3"]
    assert (first / "keep.txt").read_text() == "old"


def test_a_run_name_is_kept_as_written_but_must_be_one_folder(tmp_path):
    import pytest

    from pyfed import FL_Server
    from pyfed.errors import ConfigurationError
    from pyfed.models import NumpyModel
    from pyfed.safe_text import single_component

    assert single_component("lr 0.1: adam", "run_name") == "lr 0.1: adam"
    for name in ("a/b", "../x", "/abs", "..", ".", "", "a\\b", "a\nb", "x" * 256, 7):
        with pytest.raises(ConfigurationError, match="^run_name must"):
            FL_Server(NumpyModel([np.zeros(2)]), 1, 1, port=0, logdir=tmp_path, run_name=name)
    assert list(tmp_path.iterdir()) == []


def test_writer_needs_no_tensorflow(tmp_path):
    writer = ScalarWriter(tmp_path / "w")
    writer.scalars({"a": 1.5, "b": 2}, step=7)
    writer.close()
    assert scalars(tmp_path / "w") == {"a": [(7, 1.5)], "b": [(7, 2.0)]}
    # Importing pyfed and writing logs must not have pulled TensorFlow in (if nothing else did).
    if "keras" not in sys.modules:
        assert "tensorflow" not in sys.modules


def test_names_from_the_network_stay_inside_the_run_folder(tmp_path):
    # Was logs.safe_name, which mapped a/b, a_b and a:b to one folder; path_component is
    # injective and one component whatever it is given.
    names = ["../../etc", "client 1/x", "..", ".", "/abs", "a/b", "a_b", "a:b", "中" * 100]
    logger = RunLogger(tmp_path / "run")
    for step, name in enumerate(names):
        logger.client_history(name, {"loss": [float(step)]}, step)
    logger.close()
    folders = sorted(p.name for p in (tmp_path / "run" / "clients").iterdir())
    assert folders == sorted(path_component(n) for n in names) and len(set(folders)) == len(names)
    assert all("/" not in f and f not in (".", "..") and len(f.encode()) <= 255 for f in folders)
    for step, name in enumerate(names):
        assert scalars(tmp_path / "run" / "clients" / path_component(name)) == {
            "epoch_loss": [(step, float(step))]}, name


def test_round_line_format():
    line = round_line(3, 5, 3, {"accuracy": 0.94, "loss": 0.21}, 1.8, 64_800_000, 64_800_000)
    assert line == "round 3/5 · 3 clients · fit loss 0.21 acc 0.94 · 1.8 s · 64.8 MB in / 64.8 MB out"


def test_launch_tensorboard_serves_the_logdir_without_blocking(tmp_path):
    import json
    import os
    import signal
    import time
    import urllib.request

    from conftest import tagged
    from procs import ProcessGroup, free_port

    port, tb_port = free_port(), free_port()
    pid = None
    try:
        with ProcessGroup(tmp_path / "procs") as group:
            group.role("server", "numpy-server", "--port", port, "--clients", 1, "--rounds", 2,
                       "--logdir", tmp_path / "logs", "--launch-tensorboard",
                       "--tensorboard-port", tb_port)
            group.role("client", "numpy-client", "--port", port, "--logdir", tmp_path / "logs")
            # train() returns (the server exits) while TensorBoard keeps running.
            assert group.wait("server", timeout=60) == 0, group.dump()
            output = group.output("server")
            pid = tagged(output, "RESULT")["tensorboard_pid"]
            assert f"TensorBoard: http://localhost:{tb_port}/ (pid {pid})" in output
        body = None
        for _ in range(60):  # bounded: TensorBoard takes a few seconds to start
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{tb_port}/data/runs", timeout=2) as r:
                    body = json.loads(r.read())
                    if body:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        assert body and any(run.endswith("server") for run in body), body
    finally:
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):  # reap: it is not our child, so poll until it is gone
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_clients_with_names_that_used_to_share_a_folder_each_keep_their_own_curves(tmp_path):
    """a/b, a_b and a:b once wrote into one folder (their curves mixed), and a name over 255
    bytes lost its curves. A real server and four real clients; each curve read back alone."""
    from procs import ProcessGroup, free_port

    names = ["a/b", "a_b", "a:b", "中" * 100]  # the last: 100 characters, 300 bytes in UTF-8
    assert len(names[-1].encode()) == 300
    port, logdir, rounds, epochs = free_port(), tmp_path / "logs", 2, 2
    with ProcessGroup(tmp_path / "procs") as group:
        group.role("server", "softmax-server", "--port", port, "--clients", len(names),
                   "--rounds", rounds, "--logdir", logdir, "--run-name", "names")
        for index, name in enumerate(names, start=1):
            group.role(f"client_{index}", "softmax-client", "--port", port, "--clients",
                       len(names), "--index", index, "--name", name, "--epochs", epochs,
                       "--logdir", logdir)
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
    clients = logdir / "names" / "clients"
    assert sorted(p.name for p in clients.iterdir()) == sorted(path_component(n) for n in names)
    for name in names:
        curves = scalars(clients / path_component(name))
        # Each global epoch exactly once: a shared folder would hold every step three times.
        assert [step for step, _ in curves["epoch_loss"]] == list(range(rounds * epochs)), name
def test_a_resumed_writer_purges_what_the_stopped_run_wrote_past_its_checkpoint(tmp_path):
    stopped = ScalarWriter(tmp_path / "w")
    for step in range(1, 6):
        stopped.scalars({"loss": step}, step)
    stopped.close()
    resumed = ScalarWriter(tmp_path / "w", purge_step=4)  # the checkpoint held round 3
    for step in range(4, 8):
        resumed.scalars({"loss": 10 * step}, step)
    resumed.close()
    assert scalars(tmp_path / "w")["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0),
                                               (6, 60.0), (7, 70.0)]


def test_a_resumed_run_purges_each_client_from_the_epoch_its_first_round_began(tmp_path):
    from pyfed.tracking.logs import RunLogger

    first = RunLogger(tmp_path)
    for server_round in (1, 2, 3):  # 2 epochs a round; round 3 was never checkpointed
        first.client_history("c", {"loss": [server_round, server_round]}, (server_round - 1) * 2,
                             server_round=server_round)
    first.close()
    resumed = RunLogger(tmp_path, resumed_round=3)
    # This client's first round after the resume is round 4: its purge still starts at round 3.
    resumed.client_history("c", {"loss": [4.0, 4.0]}, 6, server_round=4)
    resumed.close()
    assert scalars(tmp_path / "clients" / "c")["epoch_loss"] == [
        (0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0), (6, 4.0), (7, 4.0)]


def test_a_writer_that_cannot_write_warns_once_and_goes_on(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    writer = ScalarWriter(tmp_path / "file" / "w")
    with caplog.at_level("WARNING", logger="pyfed"):
        for step in range(3):
            writer.scalars({"a": 1.0}, step)
        writer.flush()
        writer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(tmp_path / "file" / "w") in warnings[0], warnings


def test_a_round_written_again_replaces_its_first_curve(tmp_path):
    from pyfed.tracking.logs import RunLogger

    logger = RunLogger(tmp_path)
    logger.client_history("c", {"loss": [1.0, 1.0]}, 0, server_round=1)
    logger.client_history("c", {"loss": [2.0, 2.0]}, 2, server_round=2)  # a round that failed
    logger.client_history("c", {"loss": [3.0, 3.0]}, 2, server_round=2)  # ... and its retry
    logger.client_history("c", {"loss": [4.0, 4.0]}, 4, server_round=3)
    logger.close()
    assert scalars(tmp_path / "clients" / "c")["epoch_loss"] == [
        (0, 1.0), (1, 1.0), (2, 3.0), (3, 3.0), (4, 4.0), (5, 4.0)]
# ---------------------------------------------------------------------------------------------
# Comparing runs (issue 10 B8): HParams, custom scalars, global/ curves, the final test
# ---------------------------------------------------------------------------------------------

def plugin_data(directory):
    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def hparams_of(accumulator) -> tuple:
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content[metadata.SESSION_START_INFO_TAG]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(
        content[metadata.SESSION_END_INFO_TAG]).session_end_info
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return start.group_name, values, end.status


def layout_of(accumulator) -> dict:
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (event,) = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
            for category in layout.category}


def hparams_tab(logdir) -> dict:
    """What TensorBoard's HParams tab shows: its own backend over its own multiplexer."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, list_session_groups, api_pb2

    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"hparams": 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir),
                                                            data_provider=provider))
    ctx = context.RequestContext()
    request = api_pb2.ListSessionGroupsRequest(
        experiment_name="", allowed_statuses=[api_pb2.STATUS_SUCCESS], start_index=0,
        slice_size=100, include_metrics=True)
    response = list_session_groups.Handler(ctx, backend, "", request).run()
    return {group.name: {"hparams": {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                                     for k, v in group.hparams.items()},
                         "metrics": {(m.name.group, m.name.tag): m.value
                                     for m in group.metric_values}}
            for group in response.session_groups}


def test_runs_compare_in_tensorboard_hparams_custom_scalars_and_global_curves(tmp_path):
    from conftest import tagged
    from procs import ProcessGroup, free_port

    logdir = tmp_path / "logs"
    runs = {"avg": ["--strategy", "FedAvg"],
            "prox": ["--strategy", "FedProx", "--strategy-options", '{"proximal_mu": 0.1}',
                     "--compression", "fp16"]}
    with ProcessGroup(tmp_path / "procs") as group:
        for run, options in runs.items():  # two numpy federations (no TensorFlow), side by side
            port = free_port()
            group.role(f"{run}_server", "softmax-server", "--port", port, "--clients", 2,
                       "--rounds", 3, "--logdir", logdir, "--run-name", run, "--centralized",
                       *options)
            for i in (1, 2):
                group.role(f"{run}_client_{i}", "softmax-client", "--port", port, "--clients", 2,
                           "--index", i, "--epochs", 3, "--logdir", logdir,
                           "--validation-split", 0.2)
        codes = group.wait_all(timeout=120)
        assert set(codes.values()) == {0}, group.dump()
        results = {run: tagged(group.output(f"{run}_server"), "RESULT") for run in runs}

    server = plugin_data(logdir / "prox" / "server")
    # HParams: the strategy and its parameters, the run's shape, and the epochs the clients
    # reported (the server is not told them in this run); one session per run, completed.
    name, hparams, status = hparams_of(server)
    assert name == "prox"
    assert {"strategy": "FedProx", "strategy.proximal_mu": 0.1, "strategy.fraction_fit": 1.0,
            "clients": 2, "rounds": 3, "compression": "fp16", "epochs": 3}.items() <= hparams.items()
    from tensorboard.plugins.hparams import api_pb2

    assert status == api_pb2.STATUS_SUCCESS
    # The global model's test and eval curves at the clients' global-epoch steps: after round
    # r, step 3r, where the clients' round-r epochs (3(r-1) .. 3r-1) end.
    curves = scalars(logdir / "prox" / "server")
    per_round = [value for _, value in curves["test/accuracy"]]
    assert curves["global/test_accuracy"] == list(zip([3, 6, 9], per_round))
    assert [step for step, _ in curves["global/test_loss"]] == [3, 6, 9]
    assert [step for step, _ in curves["global/eval_accuracy"]] == [3, 6, 9]
    client = scalars(logdir / "prox" / "clients" / "client_1")
    assert [step for step, _ in client["epoch_loss"]] == list(range(9))
    # The final test (FL_Server.test after training) is logged at the last round's step, in a
    # run of its own, server/final (the per-round curve keeps one value per step).
    assert [step for step, _ in curves["test/accuracy"]] == [1, 2, 3]
    final = scalars(logdir / "prox" / "server" / "final")
    assert final["test/accuracy"] == [(3, pytest.approx(results["prox"]["test"]["accuracy"]))]
    assert final["test/loss"] == [(3, pytest.approx(results["prox"]["test"]["loss"]))]
    # custom_scalars: one chart of every client's curve with the global one, per metric.
    layout = layout_of(server)
    clients_chart = layout["PyFed: clients and the global model (step: global epoch)"]
    for metric in ("loss", "accuracy"):
        import re

        tags = [f"epoch_{metric}", f"global/test_{metric}", f"global/eval_{metric}"]
        assert all(any(re.search(rx, tag) for rx in clients_chart[metric]) for tag in tags)
    assert layout_of(plugin_data(logdir / "avg" / "server")) == layout  # merged as one
    # And TensorBoard's own HParams backend lists both runs, their settings and final metrics.
    tab = hparams_tab(logdir)
    assert set(tab) == {"avg", "prox"}, tab
    assert tab["avg"]["hparams"]["strategy"] == "FedAvg"
    assert tab["avg"]["hparams"]["compression"] == "none"
    assert tab["prox"]["hparams"]["strategy.proximal_mu"] == pytest.approx(0.1)
    for run in runs:
        metrics = tab[run]["metrics"]
        final = results[run]["test"]["accuracy"]
        assert metrics[("final", "test/accuracy")] == pytest.approx(final)
        last_round = results[run]["history"]["history"]["test_accuracy"][-1]
        assert metrics[("", "test/accuracy")] == pytest.approx(last_round)
        assert ("", "global/test_accuracy") in metrics and ("", "eval/loss") in metrics


def test_plugin_summaries_need_no_tensorflow(tmp_path):
    from pyfed.tracking.tb_plugins import RunBoard, run_hparams
    from pyfed.strategy import FedAvg

    writer = ScalarWriter(tmp_path / "server")
    board = RunBoard(writer, "run", run_hparams(FedAvg(), 3, 2, "none", {"lr": 0.01}))
    board.train_begin()
    board.client_history("c", {"loss": [1.0, 0.5]}, 0)
    board.round_end(1, {"test": {"loss": 0.4, "accuracy": 0.9}}, [{}])
    board.test_result({"loss": 0.3, "accuracy": 0.95}, 1)
    board.train_end(completed=True)
    accumulator = plugin_data(tmp_path / "server")
    name, hparams, _ = hparams_of(accumulator)
    assert (name, hparams["lr"], hparams["epochs"], hparams["strategy"]) == ("run", 0.01, 2, "FedAvg")
    assert scalars(tmp_path / "server")["global/test_accuracy"] == [(2, pytest.approx(0.9))]
    assert scalars(tmp_path / "server" / "final")["test/accuracy"] == [(1, pytest.approx(0.95))]
    if "keras" not in sys.modules:
        assert "tensorflow" not in sys.modules
