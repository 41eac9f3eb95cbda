"""DifferentialPrivacy's pure parts, without sockets: refusals, the clipped sum and its noise,
Poisson sampling, adaptive clipping, the secure-sum seam, checkpoints, the client-side clip and
the client's check of ``dp_clip_norm``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pyfed.errors import ConfigurationError, ProtocolError
from pyfed.privacy import DifferentialPrivacy, clip_update, clipped_delta, delta_norm
from pyfed.strategy import (FedAdam, FedAsync, FedAvg, FedAvgM, FedBuff, FedMedian, FedProx,
                            FedTrimmedAvg, FitResult, Krum, MultiKrum, join_arrays, split_arrays)

CLIENTS = [f"client_{i}" for i in range(10)]


def model(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(20, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32),
            np.array(7, dtype=np.int64)]


def update(weights, shift: float, name: str = "c", count: int = 10) -> FitResult:
    return FitResult(name, (weights[0] + np.float32(shift), weights[1] + np.float32(shift),
                            np.array(99, dtype=np.int64)), count, {"loss": 1.0})


def run_round(dp, weights, results, server_round=1, clients=CLIENTS):
    dp.configure_fit(server_round, weights, clients)
    dp.begin(server_round, weights)
    for result in results:
        dp.add(dp.screen(result))
    return dp.finish()


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("inner", [FedMedian(), FedTrimmedAvg(), Krum(), MultiKrum(num_to_keep=2)],
                         ids=lambda s: type(s).__name__)
def test_robust_families_are_refused(inner):
    with pytest.raises(ConfigurationError, match=f"cannot wrap {type(inner).__name__}: it "
                                                 "compares individual updates"):
        DifferentialPrivacy(inner, noise_multiplier=1.0, clipping_norm=1.0)


@pytest.mark.parametrize("inner", [FedAsync(), FedBuff()], ids=lambda s: type(s).__name__)
def test_asynchronous_strategies_are_refused(inner):
    with pytest.raises(ConfigurationError, match="asynchronous strategies"):
        DifferentialPrivacy(inner, noise_multiplier=1.0, clipping_norm=1.0)


def test_a_secure_aggregation_inside_is_refused_with_the_right_order():
    class SecureAggregation(FedAvg):  # the outer wrapper's name is what is refused
        pass

    with pytest.raises(ConfigurationError, match=r"SecureAggregation\(DifferentialPrivacy\("
                                                 r"\.\.\., clipping='client'\)\)"):
        DifferentialPrivacy(SecureAggregation(), noise_multiplier=1.0, clipping_norm=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_multiplier": -0.5, "clipping_norm": 1.0}, "noise_multiplier must be .*-0.5"),
    ({"noise_multiplier": 1.0, "clipping_norm": 0}, "clipping_norm must be .*> 0; received 0"),
    ({"noise_multiplier": 1.0, "clipping_norm": -2.0}, "clipping_norm .*received -2.0"),
    ({"noise_multiplier": 1.0}, "clipping_norm is required"),
    ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "clipping": "both"},
     "clipping must be 'server' or 'client'; received 'both'"),
    ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "adaptive_clipping": True},
     "with adaptive_clipping=True the norm starts at initial_clipping_norm"),
    ({"noise_multiplier": 0.0, "clipping_norm": 1.0, "max_epsilon": 3.0}, "max_epsilon needs noise"),
    ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "max_epsilon": -1}, "max_epsilon must be"),
    ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "target_delta": 0}, "target_delta"),
    ({"noise_multiplier": 1.0, "adaptive_clipping": True, "target_quantile": 1.5},
     "target_quantile must be in"),
    ({"noise_multiplier": 1.0, "adaptive_clipping": True, "clipped_count_stddev": 0.4},
     "2\\*sigma_b > noise_multiplier"),
])
def test_nonsense_configurations_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        DifferentialPrivacy(FedAvg(), **kwargs)


def test_a_sampling_rate_outside_0_1_is_refused():
    inner = FedAvg()
    inner.fraction_fit = 1.5  # FedAvg refuses it too; DP checks q itself
    with pytest.raises(ConfigurationError, match=r"q \(fraction_fit\) must be in \(0, 1\]"):
        DifferentialPrivacy(inner, noise_multiplier=1.0, clipping_norm=1.0)


def test_wrapping_twice_and_a_norm_bound_inside_are_refused():
    with pytest.raises(ConfigurationError, match="already applied"):
        DifferentialPrivacy(DifferentialPrivacy(FedAvg(), 1.0, 1.0), 1.0, 1.0)
    with pytest.raises(ConfigurationError, match="leave the wrapped FedAvg's max_update_norm"):
        DifferentialPrivacy(FedAvg(max_update_norm=3.0), 1.0, 1.0)


def test_adaptive_clipping_with_too_few_expected_clients_is_refused_before_training():
    dp = DifferentialPrivacy(FedAvg(fraction_fit=0.25), noise_multiplier=1.0,
                             adaptive_clipping=True)
    with pytest.raises(ConfigurationError, match="q\\*N = 2.5 expected clients .*"
                                                 "pass clipped_count_stddev"):
        dp.configure_fit(1, model(), CLIENTS)


# -- clipping, the sum and the noise ------------------------------------------------------------

def test_every_clipped_contribution_has_norm_at_most_c_even_for_plus_1000():
    weights = model()
    for clip in (0.01, 0.5, 3.0):
        for clipping in ("server", "client"):  # the server re-clips in client mode too
            dp = DifferentialPrivacy(FedAvg(), noise_multiplier=0.0, clipping_norm=clip,
                                     clipping=clipping)
            # q = 1 and N = 1: the round's move is the one clipped contribution
            new, _ = run_round(dp, weights, [update(weights, 1000.0)], clients=["c"])
            assert delta_norm(new, weights) == pytest.approx(clip, rel=1e-4)
            assert int(new[2]) == 7  # a step counter keeps the server's value


def test_with_no_noise_the_move_is_the_clipped_mean_over_q_n():
    weights = model()
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=0.0, clipping_norm=1.0)
    small = update(weights, 0.01, "a")                   # norm 0.01 * sqrt(105), unclipped
    big = update(weights, 50.0, "b")                     # clipped to 1
    new, metrics = run_round(dp, weights, [small, big], clients=["a", "b"])
    big_clipped = (50.0 / (50.0 * math.sqrt(105)))      # per-coordinate, after clipping to 1
    expected = [(w.astype(np.float64) + (0.01 + big_clipped) / 2) for w in weights[:2]]
    for got, want in zip(new[:2], expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert metrics == {"loss": 1.0}


def test_the_noise_std_is_z_c_over_q_n_and_uses_the_fixed_denominator():
    weights = [np.zeros(200_000, np.float32)]
    dp = DifferentialPrivacy(FedAvg(fraction_fit=0.5), noise_multiplier=1.5, clipping_norm=2.0)
    # N = 10, q = 0.5: std 1.5 * 2 / 5 = 0.6, however many were sampled; finish() with no
    # add() (as if the sample had been empty), so the move is the noise alone
    dp.configure_fit(1, weights, CLIENTS)
    dp.begin(1, weights)
    new, _ = dp.finish()
    assert float(np.std(new[0])) == pytest.approx(0.6, rel=0.01)
    assert dp.round_logs()["dp_noise_std"] == pytest.approx(0.6)


def test_a_fedavgm_server_update_runs_on_the_noised_mean_as_post_processing():
    weights = model()
    inner = FedAvgM(server_learning_rate=1.0, server_momentum=0.9)
    dp = DifferentialPrivacy(inner, noise_multiplier=0.0, clipping_norm=100.0)
    first, _ = run_round(dp, weights, [update(weights, 0.1, "a")], clients=["a"])
    second, _ = run_round(dp, first, [update(first, 0.1, "a")], 2, clients=["a"])
    # momentum: the second step is 0.1 + 0.9 * 0.1
    np.testing.assert_allclose(second[0] - first[0], 0.19, rtol=1e-4)
    assert inner.momentum is not None


def test_fedprox_config_and_the_clip_norm_reach_every_sampled_client():
    dp = DifferentialPrivacy(FedProx(proximal_mu=0.1, on_fit_config_fn=lambda r: {"epochs": r}),
                             noise_multiplier=1.0, clipping_norm=0.7, clipping="client")
    plan = dp.configure_fit(3, model(), CLIENTS)
    assert [name for name, _ in plan] == CLIENTS  # q = 1: everyone
    assert all(config == {"epochs": 3, "proximal_mu": 0.1, "dp_clip_norm": 0.7}
               for _, config in plan)


# -- sampling and accounting ------------------------------------------------------------------

def test_poisson_sampling_each_client_joins_independently_with_probability_q():
    dp = DifferentialPrivacy(FedAvg(fraction_fit=0.3, seed=5), noise_multiplier=1.0,
                             clipping_norm=1.0)
    pool = [f"c{i:03d}" for i in range(100)]
    sizes, joined = [], {name: 0 for name in pool}
    for server_round in range(1, 401):
        chosen = [name for name, _ in dp.configure_fit(server_round, model(), pool)]
        sizes.append(len(chosen))
        for name in chosen:
            joined[name] += 1
    # size ~ Binomial(100, 0.3): mean 30, sd 4.58; over 400 rounds the mean's sd is 0.23
    assert np.mean(sizes) == pytest.approx(30, abs=1.2)
    assert np.std(sizes) == pytest.approx(math.sqrt(100 * 0.3 * 0.7), rel=0.15)
    # each client in about 120 of 400 rounds (sd 9.2)
    assert all(70 < count < 170 for count in joined.values())


def test_a_small_federation_gets_empty_samples():
    dp = DifferentialPrivacy(FedAvg(fraction_fit=0.2, seed=0), noise_multiplier=1.0,
                             clipping_norm=1.0)
    sizes = [len(dp.configure_fit(r, model(), ["a", "b"])) for r in range(1, 101)]
    assert 0 in sizes and max(sizes) >= 1  # P(empty) = 0.64


def test_the_ledger_counts_a_round_only_when_its_result_is_applied():
    weights = model()
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    dp.configure_fit(1, weights, ["a", "b"])
    dp.begin(1, weights)
    dp.add(update(weights, 0.1, "a"))  # then b never answers: the server retries the round
    assert dp.ledger.rounds == 0 and dp.round_logs() == {}
    run_round(dp, weights, [update(weights, 0.1, "a"), update(weights, 0.1, "b")],
              clients=["a", "b"])
    assert dp.ledger.rounds == 1 and dp.round_logs()["epsilon"] == dp.epsilon()


def test_stop_before_round_names_epsilon_once_the_next_round_would_exceed_it():
    from pyfed.privacy import epsilon

    budget = (epsilon(0.5, 1.0, 2, 1e-5) + epsilon(0.5, 1.0, 3, 1e-5)) / 2
    dp = DifferentialPrivacy(FedAvg(fraction_fit=0.5), noise_multiplier=1.0, clipping_norm=1.0,
                             max_epsilon=budget)
    weights = model()
    for server_round in (1, 2):
        assert dp.stop_before_round(server_round) is None
        run_round(dp, weights, [], server_round, clients=["a", "b"])  # (nobody answers)
    reason = dp.stop_before_round(3)
    assert reason.startswith("privacy budget reached: epsilon is") and "round 3" in reason
    assert f"max_epsilon={budget:g}" in reason


# -- adaptive clipping --------------------------------------------------------------------------

def test_adaptive_clipping_follows_the_target_quantile_of_update_norms():
    rng = np.random.default_rng(3)
    weights = [np.zeros(50, np.float32)]
    clients = [f"c{i:03d}" for i in range(100)]
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=0.5, adaptive_clipping=True,
                             initial_clipping_norm=0.05, target_quantile=0.5, clip_norm_lr=0.2)
    norms = rng.lognormal(mean=0.0, sigma=0.4, size=100)  # each client's update norm, median ~1
    direction = np.ones(50, np.float32) / math.sqrt(50)
    for server_round in range(1, 121):
        dp.configure_fit(server_round, weights, clients)
        dp.begin(server_round, weights)
        for name, norm in zip(clients, norms):
            dp.add(FitResult(name, (weights[0] + np.float32(norm) * direction,), 1))
        dp.finish()  # weights stay zeros: every round starts from the same model
    assert dp.clipping_norm == pytest.approx(float(np.median(norms)), rel=0.15)


# -- the secure-aggregation seam ------------------------------------------------------------------

def test_secure_sum_request_needs_client_clipping():
    server_side = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    with pytest.raises(ConfigurationError, match="use clipping='client'"):
        server_side.secure_sum_request(1)
    client_side = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping="client",
                                      adaptive_clipping=True, initial_clipping_norm=0.3,
                                      clipped_count_stddev=2.0)
    assert client_side.secure_sum_request(1) == {"vector": "clipped_delta", "clip_norm": 0.3,
                                                 "clipped_bit": True}


def test_a_secure_sum_gives_what_the_same_updates_one_by_one_give():
    weights = model()
    updates = [update(weights, s, f"c{i}") for i, s in enumerate((0.01, 2.0, -0.5))]
    one_by_one = DifferentialPrivacy(FedAvg(), 0.0, clipping_norm=0.8, clipping="client")
    expected, _ = run_round(one_by_one, weights, updates, clients=["c0", "c1", "c2"])

    secure = DifferentialPrivacy(FedAvg(), 0.0, clipping_norm=0.8, clipping="client")
    secure.configure_fit(1, weights, ["c0", "c1", "c2"])
    secure.begin(1, weights)
    deltas = [clipped_delta(u.weights, weights, 0.8)[0] for u in updates]
    total = [sum(d[i] for d in deltas) for i in range(len(weights))]
    secure.add_secure_sum(3.0, total, 3, {})
    got, _ = secure.finish()
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert secure.ledger.rounds == 1


def test_a_secure_sum_feeds_adaptive_clipping_from_the_summed_bits():
    weights = model()

    def round_with(unclipped: float) -> float:
        dp = DifferentialPrivacy(FedAvg(), 0.0, clipping="client", adaptive_clipping=True,
                                 initial_clipping_norm=1.0, clip_norm_lr=0.2,
                                 clipped_count_stddev=1e-9)
        dp.configure_fit(1, weights, CLIENTS)
        dp.begin(1, weights)
        dp.add_secure_sum(10.0, [np.zeros_like(w, dtype=np.float64) for w in weights], 10,
                          {"unclipped": unclipped})
        dp.finish()
        return dp.clipping_norm

    assert round_with(10.2) == pytest.approx(math.exp(-0.2 * 0.5), rel=1e-6)  # all unclipped
    assert round_with(0.0) == pytest.approx(math.exp(0.2 * 0.5), rel=1e-6)    # none
    assert round_with(5.0) == pytest.approx(1.0, rel=1e-6)                    # the quantile
    dp = DifferentialPrivacy(FedAvg(), 1.0, clipping="client", adaptive_clipping=True,
                             clipped_count_stddev=1.0)
    dp.configure_fit(1, weights, CLIENTS)
    dp.begin(1, weights)
    with pytest.raises(ConfigurationError, match="extras\\['unclipped'\\]"):
        dp.add_secure_sum(1.0, list(weights), 1, {})


# -- checkpoints ------------------------------------------------------------------------------

def test_state_survives_a_checkpoint_round_trip_and_a_resume_keeps_counting():
    weights = model()

    def make():
        return DifferentialPrivacy(FedAvgM(server_momentum=0.5, seed=1), noise_multiplier=0.8,
                                   clipping="client", adaptive_clipping=True,
                                   clipped_count_stddev=1.0)

    dp = make()
    for server_round in (1, 2):
        run_round(dp, weights, [update(weights, 0.2, "client_1")], server_round)
    document, arrays = split_arrays(dp.state_dict())
    restored = make()
    restored.load_state_dict(join_arrays(json.loads(json.dumps(document)), arrays))
    assert restored.ledger.rounds == 2 and restored.epsilon() == dp.epsilon()
    assert restored.clipping_norm == dp.clipping_norm != 0.1
    np.testing.assert_array_equal(restored.strategy.momentum[0], dp.strategy.momentum[0])
    same = [[n for n, _ in s.configure_fit(3, weights, CLIENTS)] for s in (dp, restored)]
    assert same[0] == same[1]  # the sampling stream continues where it was
    with pytest.raises(ConfigurationError, match="noise_multiplier"):
        DifferentialPrivacy(FedAvgM(), noise_multiplier=2.0, clipping_norm=1.0).load_state_dict(
            dp.state_dict())


def test_fedadam_is_wrapped_as_post_processing():
    dp = DifferentialPrivacy(FedAdam(), noise_multiplier=1.0, clipping_norm=1.0)
    new, _ = run_round(dp, model(), [update(model(), 0.1, "client_1")])
    assert all(np.all(np.isfinite(w)) for w in new)


# -- the client's side --------------------------------------------------------------------------

def test_clip_update_and_clipped_delta_agree_and_say_whether_it_was_clipped():
    reference = model()
    trained = [reference[0] + 3, reference[1] - 3, np.array(8, dtype=np.int64)]
    weights, unclipped = clip_update(trained, reference, 0.5)
    assert not unclipped and delta_norm(weights, reference) == pytest.approx(0.5, rel=1e-5)
    assert [w.dtype for w in weights] == [w.dtype for w in trained]
    deltas, unclipped = clipped_delta(trained, reference, 0.5)
    assert not unclipped
    assert math.sqrt(sum(float(np.sum(d * d)) for d in deltas)) == pytest.approx(0.5)
    assert deltas[2].dtype == np.float64 and not deltas[2].any()
    _, small = clip_update([w + np.float32(1e-4) if w.dtype.kind == "f" else w
                            for w in reference], reference, 0.5)
    assert small


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "1.0", True, None])
def test_the_client_refuses_a_clip_norm_that_is_not_a_positive_finite_number(value):
    from pyfed.client.checks import training_config

    if value is None:  # None means "not set" and is dropped, as every config key
        assert training_config({"dp_clip_norm": None}, "FIT") == {}
        return
    with pytest.raises(ProtocolError, match="config dp_clip_norm must be a finite number > 0"):
        training_config({"dp_clip_norm": value}, "FIT")


def test_the_privacy_figures_reach_tensorboard_and_the_progress_line():
    import io

    from pyfed.tracking.progress import ProgressPrinter
    from pyfed.tracking.round_logs import scalars

    logs = {"participants": 3, "round_seconds": 0.5, "bytes_in": 10, "bytes_out": 10,
            "epsilon": 1.2345, "dp_clipping_norm": 0.7, "dp_noise_std": 0.1}
    assert {"privacy/epsilon": 1.2345, "privacy/clipping_norm": 0.7,
            "privacy/noise_std": 0.1}.items() <= scalars(logs).items()

    class Server:
        rounds = 10

    out = io.StringIO()
    ProgressPrinter(out).on_round_end(Server(), 2, logs)
    assert out.getvalue().startswith("round 2/10 · 3 clients · ε 1.23 · 0.5 s")
