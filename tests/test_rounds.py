"""Round control end to end: strategies, sampling, per-round config, evaluation.

Real server and client processes over loopback, training pyfed's numpy SoftmaxRegression on
digits: a real model whose processes start in milliseconds, so every strategy gets a whole run.
"""

import json

import pytest

from conftest import tagged
from procs import ProcessGroup, free_port
from test_logs import scalars


def run_federation(tmp_path, *, clients=3, rounds=3, strategy="FedAvg", strategy_options=None,
                   fit_config=None, centralized=False, validation_split=0.0, name="run"):
    port = free_port()
    logdir = tmp_path / name / "logs"
    server_args = ["softmax-server", "--port", port, "--clients", clients, "--rounds", rounds,
                   "--logdir", logdir, "--strategy", strategy,
                   "--strategy-options", json.dumps(strategy_options or {})]
    if fit_config is not None:
        server_args += ["--fit-config", json.dumps(fit_config)]
    if centralized:
        server_args.append("--centralized")
    with ProcessGroup(tmp_path / name / "procs") as group:
        group.role("server", *server_args)
        for i in range(1, clients + 1):
            group.role(f"client_{i}", "softmax-client", "--port", port, "--clients", clients,
                       "--index", i, "--logdir", logdir, "--validation-split", validation_split)
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        result["server_output"] = group.output("server")
        result["logdir"] = logdir
    return result


STRATEGIES = [
    ("FedAvg", {}), ("FedProx", {"proximal_mu": 0.1}), ("FedAvgM", {"server_momentum": 0.5}),
    ("FedAdam", {"eta": 0.05}), ("FedYogi", {"eta": 0.05}), ("FedAdagrad", {"eta": 0.05}),
    ("FedMedian", {}), ("FedTrimmedAvg", {"beta": 0.2}), ("Krum", {"num_malicious": 0}),
    ("MultiKrum", {"num_to_keep": 2}),
]


@pytest.mark.parametrize("strategy,options", STRATEGIES, ids=[s for s, _ in STRATEGIES])
def test_every_strategy_runs_a_real_federation_to_the_end(tmp_path, strategy, options):
    result = run_federation(tmp_path, rounds=3, strategy=strategy, strategy_options=options)
    history = result["history"]["history"]
    assert result["history"]["rounds"] == [1, 2, 3]
    assert history["participants"] == [3, 3, 3]
    # Every strategy learns something real on digits in 3 rounds (chance is 0.10).
    assert result["test"]["accuracy"] > 0.6, (strategy, result["test"])


def test_fraction_fit_samples_exactly_half_and_the_seed_fixes_who(tmp_path):
    options = {"fraction_fit": 0.5, "seed": 7}
    first = run_federation(tmp_path, clients=4, rounds=4, strategy_options=options, name="a")
    again = run_federation(tmp_path, clients=4, rounds=4, strategy_options=options, name="b")
    other = run_federation(tmp_path, clients=4, rounds=4,
                           strategy_options={**options, "seed": 8}, name="c")
    chosen = first["history"]["history"]["clients"]
    assert [len(c) for c in chosen] == [2, 2, 2, 2]
    assert first["history"]["history"]["participants"] == [2, 2, 2, 2]
    assert chosen == again["history"]["history"]["clients"]
    assert chosen != other["history"]["history"]["clients"]
    assert "round 1/4 · 2 clients" in first["server_output"]


def test_on_fit_config_fn_settings_are_applied_by_the_clients(tmp_path):
    # The server asks for 3 local epochs per round; the clients were told 1 (--epochs default 2
    # in roles.py): each client's curve must therefore have 3 epochs per round.
    result = run_federation(tmp_path, rounds=2, fit_config={"epochs": 3, "lr": 0.3})
    run = next(p for p in result["logdir"].iterdir() if p.is_dir())
    curves = scalars(run / "clients" / "client_1")
    assert [step for step, _ in curves["epoch_loss"]] == list(range(6))


def test_centralized_and_federated_evaluation_every_round(tmp_path):
    result = run_federation(tmp_path, rounds=3, centralized=True, validation_split=0.2)
    history = result["history"]["history"]
    for key in ("test_loss", "test_accuracy", "eval_loss", "eval_accuracy"):
        assert len(history[key]) == 3 and all(v is not None for v in history[key]), key
    assert history["test_accuracy"][-1] > 0.8 and history["eval_accuracy"][-1] > 0.8
    run = next(p for p in result["logdir"].iterdir() if p.is_dir())
    server = scalars(run / "server")
    for tag in ("test/loss", "test/accuracy", "eval/loss", "eval/accuracy"):
        assert [s for s, _ in server[tag]] == [1, 2, 3], tag
    assert " · test loss " in result["server_output"] and " · eval loss " in result["server_output"]


# ---------------------------------------------------------------------------------------------
# validate_update: the value check's fast path (a dot product) and slow path agree
# ---------------------------------------------------------------------------------------------

def _check(values):
    import numpy as np

    from pyfed.server.collect import UpdateRejected, validate_update
    from pyfed.wire.spec import TensorSpec

    array = np.asarray(values, dtype=np.float32)
    spec = [TensorSpec(name="kernel", path="dense/kernel", shape=array.shape, dtype="<f4")]
    try:
        validate_update((array,), spec, num_examples=1, max_examples=10)
    except UpdateRejected as exc:
        return str(exc)
    return None


def test_value_check_rejects_nan_inf_and_huge_values_anywhere_and_names_them():
    import numpy as np

    from pyfed.wire.values import CHECK_CHUNK as _CHECK_CHUNK

    size = 2 * _CHECK_CHUNK + 1000  # several check chunks: the bad value sits in a later one
    for bad, shown in [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "-Inf"), (-3e38, "-3e+38"),
                       (2e18, "2e+18")]:
        values = np.ones(size, dtype=np.float32)
        values[_CHECK_CHUNK + 1001] = bad
        reason = _check(values)
        assert reason is not None and f"contains {shown}" in reason, (bad, reason)
        assert "dense/kernel" in reason and "1e+18" in reason
    assert _check(np.ones(size)) is None
    assert _check(np.zeros(0)) is None


def test_value_check_accepts_every_value_within_the_bound_even_when_the_fast_path_overflows():
    import numpy as np

    # Each 9e17 passes; their squares sum past float32's range, so the slow path decides.
    assert _check(np.full(70_000, 9e17)) is None
    assert _check(np.full(10, -1e18)) is None


# ---------------------------------------------------------------------------------------------
# One client's update never takes the round's thread down (no sockets)
# ---------------------------------------------------------------------------------------------

def _collector(strategy, clients=("a", "b", "c"), **options):
    import numpy as np

    from pyfed.wire.messages import FitResult
    from pyfed.server.collect import FitCollector
    from pyfed.wire.spec import spec_of_arrays

    current = [np.zeros(4, np.float32)]
    collector = FitCollector(1, set(clients), strategy, spec_of_arrays(current), 100, **options)
    strategy.configure_fit(1, current, list(clients))
    strategy.begin(1, current)
    result = FitResult(round=1, weights=(np.ones(4, np.float32),), num_examples=10,
                       metrics={"loss": 0.5}, history={"loss": [0.5]})
    return collector, result


def test_an_exception_from_the_strategys_fold_ends_the_round_with_its_reason():
    import time

    import pytest

    from pyfed.errors import RoundError
    from pyfed.server.collect import UpdateRejected
    from pyfed.strategy import FedAvg

    class Buggy(FedAvg):
        def _accumulate(self, result):
            if result.client == "b":
                raise IndexError("a bug in the fold")
            super()._accumulate(result)

    collector, result = _collector(Buggy())
    collector.add("a", result)
    with pytest.raises(UpdateRejected, match="could not aggregate it"):
        collector.add("b", result)
    started = time.monotonic()
    collector.wait(timeout=30)  # nobody is waited for: the round closed at once
    assert time.monotonic() - started < 5 and collector.closed and not collector.pending
    with pytest.raises(UpdateRejected, match="closed"):  # later answers are refused
        collector.add("c", result)
    with pytest.raises(RoundError, match=r"folding b's update failed \(IndexError: a bug"):
        collector.require(1)


def test_an_exception_while_screening_or_logging_refuses_only_that_update(caplog):
    import pytest

    from pyfed.server.collect import UpdateRejected
    from pyfed.strategy import FedAvg

    class Picky(FedAvg):
        def screen(self, result):
            if result.client == "b":
                raise ZeroDivisionError("a bug in the screen")
            return result

    def broken_writer(name, history, first_epoch):
        raise ValueError("the TensorBoard writer failed")

    collector, result = _collector(Picky(), on_history=broken_writer)
    collector.add("a", result)
    with pytest.raises(UpdateRejected, match="could not check it"):
        collector.add("b", result)
    collector.add("c", result)
    collector.require(2)
    assert sorted(collector.answered) == ["a", "c"] and "b" in collector.failures
    assert "the TensorBoard writer failed" in caplog.text
