"""Strategies and their aggregation math, against hand-computed numbers. No sockets, no TF."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pyfed.errors import ConfigurationError, RoundError
from pyfed.strategy import (
    EvaluateResult,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    FitResult,
    Krum,
    MultiKrum,
    Strategy,
    aggregate,
    join_arrays,
    split_arrays,
)

F64 = np.float64


def fit(client, *arrays, n=1, **metrics):
    return FitResult(client, tuple(np.asarray(a) for a in arrays), n, metrics)


def run_round(strategy, server_round, parameters, results):
    strategy.begin(server_round, parameters)
    for result in results:
        strategy.add(result)
    return strategy.finish()


# ---------------------------------------------------------------------------------------------
# aggregate.py: pure functions
# ---------------------------------------------------------------------------------------------

def test_weighted_sum_matches_batch_numpy_and_casts_back():
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
               for _ in range(5)]
    weights = [1, 7, 3, 2, 10]
    result = aggregate.weighted_average(updates, weights)
    for index in range(2):
        stack = np.stack([u[index].astype(F64) for u in updates])
        expected = np.average(stack, axis=0, weights=weights)
        assert result[index].dtype == np.float32
        np.testing.assert_allclose(result[index], expected.astype(np.float32), rtol=1e-6)


def test_weighted_sum_rounds_integer_tensors():
    # (0*1 + 3*2)/3 = 2 ; (4*1 + 8*2)/3 = 6.67 -> 7
    mean = aggregate.weighted_average([[np.array([0, 4], np.int32)], [np.array([3, 8], np.int32)]],
                                      [1, 2])
    assert mean[0].dtype == np.int32 and mean[0].tolist() == [2, 7]


def test_weighted_metrics_and_loss():
    metrics = aggregate.weighted_metrics([(10, {"acc": 0.5, "name": "x", "flag": True}),
                                          (30, {"acc": 0.9})])
    assert metrics == pytest.approx({"acc": 0.8})
    assert aggregate.weighted_loss([(10, 1.0), (30, 2.0), (0, 100.0)]) == pytest.approx(1.75)
    assert aggregate.weighted_loss([(0, 1.0)]) is None


def test_median_odd_and_even():
    three = [[np.array([1.0, 5.0])], [np.array([2.0, 3.0])], [np.array([10.0, 4.0])]]
    assert aggregate.median(three)[0].tolist() == [2.0, 4.0]
    four = [[np.array([1.0])], [np.array([2.0])], [np.array([3.0])], [np.array([100.0])]]
    assert aggregate.median(four)[0].tolist() == [2.5]


def test_trimmed_mean_cuts_from_each_end():
    # beta=0.2, n=5: int(1.0) = 1 value cut from each end.
    updates = [[np.array([v, w])] for v, w in [(1, -50), (2, 0), (3, 1), (4, 2), (100, 3)]]
    assert aggregate.trimmed_mean(updates, 0.2)[0].tolist() == [3.0, 1.0]
    # n=4: int(0.8) = 0 cut, the plain mean.
    four = [[np.array([v], F64)] for v in (1, 2, 3, 10)]
    assert aggregate.trimmed_mean(four, 0.2)[0].tolist() == [4.0]
    # beta=0.25, n=4: 1 cut from each end -> mean(2, 3).
    assert aggregate.trimmed_mean(four, 0.25)[0].tolist() == [2.5]
    with pytest.raises(ValueError, match="beta must be in"):
        aggregate.trimmed_mean(four, 0.5)


# A, B, C honest and close together; D far away. Two tensors, so distances sum across tensors.
KRUM_UPDATES = {"a": ([0.0], [0.0]), "b": ([1.0], [0.0]), "c": ([0.0], [2.0]),
                "d": ([10.0], [10.0])}
# Squared distances: ab=1 ac=4 ad=200 bc=5 bd=181 cd=164.


def krum_list():
    return [[np.array(x) for x in KRUM_UPDATES[k]] for k in "abcd"]


def test_pairwise_distances_and_krum_scores():
    distances = aggregate.pairwise_sq_distances(krum_list())
    np.testing.assert_array_equal(distances, [[0, 1, 4, 200], [1, 0, 5, 181],
                                              [4, 5, 0, 164], [200, 181, 164, 0]])
    # f=0: n-f-2 = 2 nearest. a: 1+4, b: 1+5, c: 4+5, d: 164+181.
    assert aggregate.krum_scores(krum_list(), 0).tolist() == [5, 6, 9, 345]
    # f=1: 1 nearest.
    assert aggregate.krum_scores(krum_list(), 1).tolist() == [1, 1, 4, 164]
    # f=3: n-f-2 < 1, so at least 1 neighbour counts (as Flower).
    assert aggregate.krum_scores(krum_list(), 3).tolist() == [1, 1, 4, 164]
    assert aggregate.krum_select(krum_list(), 0, 0) == [0]
    assert aggregate.krum_select(krum_list(), 0, 2) == [0, 1]
    assert aggregate.krum_select(krum_list(), 0, 3) == [0, 1, 2]


def test_fedavgm_update_two_steps():
    # g1 = [1,2]-[0,3] = [1,-1]; v1 = g1; new = [1,2] - 0.5*[1,-1] = [0.5, 2.5]
    new, v = aggregate.fedavgm_update([np.array([1.0, 2.0])], [np.array([0.0, 3.0])], None,
                                      server_learning_rate=0.5, server_momentum=0.9)
    np.testing.assert_allclose(new[0], [0.5, 2.5])
    np.testing.assert_allclose(v[0], [1.0, -1.0])
    # g2 = [0.5,2.5]-[0.5,3.5] = [0,-1]; v2 = 0.9*[1,-1] + [0,-1] = [0.9,-1.9]
    # new = [0.5,2.5] - 0.5*[0.9,-1.9] = [0.05, 3.45]
    new, v = aggregate.fedavgm_update(new, [np.array([0.5, 3.5])], v,
                                      server_learning_rate=0.5, server_momentum=0.9)
    np.testing.assert_allclose(new[0], [0.05, 3.45])
    np.testing.assert_allclose(v[0], [0.9, -1.9])


# FedOpt hand computations: eta=1, beta_1=0.5, beta_2=0.6, tau=0.5, x0=[1,-1,0],
# round 1 delta d1=[1,0,2], round 2 delta d2=[-1,2,0.5].
X0 = np.array([1.0, -1.0, 0.0])
D1 = np.array([1.0, 0.0, 2.0])
D2 = np.array([-1.0, 2.0, 0.5])
OPT = {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.6, "tau": 0.5}
# Adam: m1=[.5,0,1] v1=[.4,0,1.6]; rate1 = sqrt(1-.6**2)/(1-.5**2) = .8/.75
#       m2=[-.25,1,.75] v2=[.64,1.6,1.06]; rate2 = sqrt(1-.6**3)/(1-.5**3) = sqrt(.784)/.875
ADAM_X1 = [1.470953002786403, -1.0, 0.6043741740779075]
ADAM_X2 = [1.2763513006221952, -0.4266403152792154, 1.100559444932945]
# Yogi: v1 = [.4,0,1.6]; v2 = [.4+.4, 0+1.6, 1.6-.4*.25] = [.8,1.6,1.5]; plain eta.
YOGI_X1 = [1.4415184401122527, -1.0, 0.5666007881980383]
YOGI_X2 = [1.2622333532941092, -0.4333992118019617, 1.0014477110329918]
# Adagrad: m = delta; v1 = [1,0,4] -> x1 = [1+1/1.5, -1, 2/2.5]; v2 = [2,4,4.25].
ADAGRAD_X1 = [1 + 1 / 1.5, -1.0, 0.8]
ADAGRAD_X2 = [1.1442589167391837, -0.19999999999999996, 0.9951941016011039]


def test_fedadam_update_bias_corrected():
    x1, m, v = aggregate.fedadam_update([X0], [X0 + D1], None, None, server_round=1, **OPT)
    np.testing.assert_allclose(m[0], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(v[0], [0.4, 0.0, 1.6])
    np.testing.assert_allclose(x1[0], ADAM_X1, rtol=1e-12)
    x2, m, v = aggregate.fedadam_update(x1, [x1[0] + D2], m, v, server_round=2, **OPT)
    np.testing.assert_allclose(m[0], [-0.25, 1.0, 0.75])
    np.testing.assert_allclose(v[0], [0.64, 1.6, 1.06])
    np.testing.assert_allclose(x2[0], ADAM_X2, rtol=1e-12)


def test_fedyogi_and_fedadagrad_updates():
    x1, m, v = aggregate.fedyogi_update([X0], [X0 + D1], None, None, **OPT)
    np.testing.assert_allclose(x1[0], YOGI_X1, rtol=1e-12)
    x2, m, v = aggregate.fedyogi_update(x1, [x1[0] + D2], m, v, **OPT)
    np.testing.assert_allclose(v[0], [0.8, 1.6, 1.5])
    np.testing.assert_allclose(x2[0], YOGI_X2, rtol=1e-12)
    x1, m, v = aggregate.fedadagrad_update([X0], [X0 + D1], None, None, eta=1.0, tau=0.5)
    np.testing.assert_allclose(x1[0], ADAGRAD_X1, rtol=1e-12)
    x2, m, v = aggregate.fedadagrad_update(x1, [x1[0] + D2], m, v, eta=1.0, tau=0.5)
    np.testing.assert_allclose(m[0], D2)
    np.testing.assert_allclose(v[0], [2.0, 4.0, 4.25])
    np.testing.assert_allclose(x2[0], ADAGRAD_X2, rtol=1e-12)


def test_pure_functions_do_not_modify_inputs():
    current, average, m, v = [X0.copy()], [X0 + D1], [np.ones(3)], [np.ones(3)]
    aggregate.fedadam_update(current, average, m, v, server_round=3, **OPT)
    aggregate.fedavgm_update(current, average, m, server_learning_rate=1, server_momentum=0.5)
    updates = krum_list()
    aggregate.trimmed_mean(updates, 0.25)
    np.testing.assert_array_equal(current[0], X0)
    np.testing.assert_array_equal(m[0], np.ones(3))
    assert [u[0][0] for u in updates] == [0.0, 1.0, 0.0, 10.0]


# ---------------------------------------------------------------------------------------------
# FedAvg: streaming, sampling, configs, evaluation, checkpoints
# ---------------------------------------------------------------------------------------------

def test_fedavg_round_hand_computed():
    # (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5.0] ; (1*10 + 3*20)/4 = 17.5
    params = [np.zeros(2, np.float32), np.zeros(1, np.float32)]
    new, metrics = run_round(FedAvg(), 1, params, [fit("a", [1, 2], [10], n=1, acc=0.2),
                                                   fit("b", [3, 6], [20], n=3, acc=0.6)])
    assert new[0].dtype == np.float32
    assert new[0].tolist() == [2.5, 5.0] and new[1].tolist() == [17.5]
    assert metrics == pytest.approx({"acc": 0.5})


def test_fedavg_streaming_equals_batch_and_keeps_no_references():
    rng = np.random.default_rng(1)
    params = [np.zeros((4, 3), np.float32), np.zeros(7, np.float32)]
    updates = [[rng.normal(size=p.shape).astype(np.float32) for p in params] for _ in range(6)]
    counts = [5, 1, 9, 2, 2, 30]
    expected = aggregate.weighted_average(updates, counts)
    strategy = FedAvg()
    strategy.begin(1, params)
    for index, (update, count) in enumerate(zip(updates, counts)):
        buffer = [u.copy() for u in update]  # plays the pooled receive buffer
        strategy.add(FitResult(f"c{index}", tuple(buffer), count))
        for array in buffer:
            array[...] = 1e6  # reused right after add() returns
    new, _ = strategy.finish()
    for got, want in zip(new, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not FedAvg.needs_all_updates


@pytest.mark.parametrize("make", [FedMedian, FedTrimmedAvg, Krum,
                                  lambda: MultiKrum(num_to_keep=2)])
def test_needs_all_updates_strategies_copy(make):
    strategy = make()
    assert strategy.needs_all_updates
    params = [np.zeros(2)]
    clean = [[np.array([1.0, 2.0])], [np.array([2.0, 3.0])], [np.array([4.0, 4.0])]]
    expected, _ = run_round(make(), 1, params, [fit(f"c{i}", *u) for i, u in enumerate(clean)])
    strategy.begin(1, params)
    for index, update in enumerate(clean):
        buffer = [u.copy() for u in update]
        strategy.add(FitResult(f"c{index}", tuple(buffer), 1))
        buffer[0][...] = -1e6
    got, _ = strategy.finish()
    np.testing.assert_array_equal(got[0], expected[0])


def test_sampling_fraction_and_seed():
    clients = ["d", "b", "a", "c"]
    params = [np.zeros(1)]

    def sequence(seed, rounds=8):
        strategy = FedAvg(fraction_fit=0.5, seed=seed)
        return [[name for name, _ in strategy.configure_fit(r, params, clients)]
                for r in range(1, rounds + 1)]

    first = sequence(7)
    assert all(len(chosen) == 2 and set(chosen) <= set(clients) for chosen in first)
    assert first == sequence(7)
    assert first != sequence(8)
    assert len({tuple(c) for c in first}) > 1  # it does vary from round to round
    # Client order does not matter, only the seed.
    strategy = FedAvg(fraction_fit=0.5, seed=7)
    assert [n for n, _ in strategy.configure_fit(1, params, sorted(clients))] == first[0]


def test_sample_size_rules():
    strategy = FedAvg(fraction_fit=0.5, min_fit_clients=3, min_available_clients=3, seed=0)
    assert len(strategy.configure_fit(1, [], ["a", "b", "c", "d"])) == 3
    assert strategy.num_fit_clients(100) == 50
    assert FedAvg(fraction_fit=0.29).num_fit_clients(100) == 29
    assert FedAvg(fraction_fit=0.1).num_fit_clients(4) == 1  # min_fit_clients=1
    assert FedAvg(min_fit_clients=5).num_fit_clients(3) == 3  # capped at n
    with pytest.raises(RoundError, match="2 clients connected; min_available_clients is 3"):
        strategy.configure_fit(2, [], ["a", "b"])


def test_fit_config_reaches_every_sampled_client():
    strategy = FedAvg(fraction_fit=0.5, seed=3,
                      on_fit_config_fn=lambda r: {"epochs": r, "lr": 0.1})
    plan = strategy.configure_fit(4, [], ["a", "b", "c", "d", "e", "f"])
    assert len(plan) == 3
    assert all(config == {"epochs": 4, "lr": 0.1} for _, config in plan)
    plan[0][1]["epochs"] = 99  # each client gets its own dict
    assert plan[1][1]["epochs"] == 4
    bad = FedAvg(on_fit_config_fn=lambda r: [1])
    with pytest.raises(ConfigurationError, match="on_fit_config_fn must return a dict"):
        bad.configure_fit(1, [], ["a"])


def test_configure_evaluate():
    assert FedAvg(fraction_evaluate=0.0).configure_evaluate(1, [], ["a", "b"]) == []
    strategy = FedAvg(fraction_evaluate=0.5, seed=1, on_evaluate_config_fn=lambda r: {"r": r})
    plan = strategy.configure_evaluate(2, [], ["a", "b", "c", "d"])
    assert len(plan) == 2 and all(config == {"r": 2} for _, config in plan)


def test_aggregate_evaluate_weighting():
    results = [EvaluateResult("a", 10, 1.0, {"acc": 0.5}),
               EvaluateResult("b", 30, 2.0, {"acc": 0.9}),
               EvaluateResult("c", 0, 100.0, {"acc": 0.0})]
    loss, metrics = FedAvg().aggregate_evaluate(1, results)
    assert loss == pytest.approx(1.75)  # (10*1 + 30*2) / 40; c has no examples
    assert metrics == pytest.approx({"acc": 0.8})  # (10*.5 + 30*.9) / 40
    seen = []
    custom = FedAvg(evaluate_metrics_aggregation_fn=lambda pairs: seen.append(pairs) or {"k": 1})
    assert custom.aggregate_evaluate(1, results) == (pytest.approx(1.75), {"k": 1})
    assert seen == [[(10, {"acc": 0.5}), (30, {"acc": 0.9})]]
    assert FedAvg().aggregate_evaluate(1, []) == (None, {})


def test_fit_metrics_aggregation_fn_and_centralized_evaluate():
    strategy = FedAvg(fit_metrics_aggregation_fn=lambda pairs: {"n": sum(n for n, _ in pairs)},
                      evaluate_fn=lambda r, p, c: (float(p[0].sum()) + r, {"cfg": len(c)}))
    _, metrics = run_round(strategy, 1, [np.zeros(1)], [fit("a", [1.0], n=2), fit("b", [3.0], n=5)])
    assert metrics == {"n": 7}
    assert strategy.evaluate(2, [np.array([1.0, 2.0])]) == (5.0, {"cfg": 0})
    assert FedAvg().evaluate(1, []) is None


def test_argument_validation_messages():
    cases = [
        (lambda: FedAvg(fraction_fit=1.5), "fraction_fit must be in (0, 1]; received 1.5"),
        (lambda: FedAvg(fraction_fit=0), "fraction_fit must be in (0, 1]; received 0"),
        (lambda: FedAvg(fraction_evaluate=-0.1),
         "fraction_evaluate must be in [0, 1]; received -0.1"),
        (lambda: FedAvg(min_fit_clients=0), "min_fit_clients must be an integer >= 1; received 0"),
        (lambda: FedAvg(min_available_clients=2.5),
         "min_available_clients must be an integer >= 1; received 2.5"),
        (lambda: FedAvg(on_fit_config_fn=3), "on_fit_config_fn must be callable or None"),
        (lambda: FedAvg(seed=-1), "seed must be an integer >= 0; received -1"),
        (lambda: FedProx(proximal_mu=-0.1), "proximal_mu must be in [0, inf); received -0.1"),
        (lambda: FedAvgM(server_momentum=1.0), "server_momentum must be in [0, 1); received 1.0"),
        (lambda: FedAvgM(server_learning_rate=0),
         "server_learning_rate must be in (0, inf); received 0"),
        (lambda: FedAdam(tau=0), "tau must be in (0, inf); received 0"),
        (lambda: FedYogi(beta_2=1.2), "beta_2 must be in [0, 1); received 1.2"),
        (lambda: FedTrimmedAvg(beta=0.5), "beta must be in [0, 0.5); received 0.5"),
        (lambda: Krum(num_malicious=-1), "num_malicious must be an integer >= 0; received -1"),
        (lambda: MultiKrum(num_to_keep=0), "num_to_keep must be an integer >= 1; received 0"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigurationError) as info:
            make()
        assert message in str(info.value)
    assert FedAvg(fraction_evaluate=0).fraction_evaluate == 0.0
    assert issubclass(ConfigurationError, ValueError)


def test_finish_and_add_misuse():
    strategy = FedAvg()
    with pytest.raises(RuntimeError, match="before begin"):
        strategy.add(fit("a", [1.0]))
    strategy.begin(1, [np.zeros(1)])
    with pytest.raises(RuntimeError, match="no results"):
        strategy.finish()


def jsonify(state):
    """A checkpoint's round trip: arrays to nested lists, through JSON text, back."""
    def walk(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value
    return json.loads(json.dumps(walk(state)))


@pytest.mark.parametrize("make", [
    lambda: FedAvg(fraction_fit=0.5, seed=11),
    lambda: FedAvgM(fraction_fit=0.5, server_learning_rate=0.7, server_momentum=0.9),
    lambda: FedAdam(fraction_fit=0.5, **OPT),
    lambda: FedYogi(fraction_fit=0.5, **OPT),
    lambda: FedAdagrad(fraction_fit=0.5, eta=1.0, tau=0.5),
])
def test_state_dict_round_trip_resumes_identically(make):
    clients = ["a", "b", "c", "d"]
    original = make()
    params = [np.array([1.0, -1.0, 0.0]), np.array([[0.5]], np.float32)]

    def play(strategy, server_round, parameters):
        plan = strategy.configure_fit(server_round, parameters, clients)
        results = [fit(name, parameters[0] + (i + 1) * D1, parameters[1] - i, n=i + 1)
                   for i, (name, _) in enumerate(plan)]
        return plan, run_round(strategy, server_round, parameters, results)[0]

    _, params = play(original, 1, params)
    state = original.state_dict()
    resumed = make()
    resumed.load_state_dict(jsonify(state))
    again = make()
    document, arrays = split_arrays(state)
    again.load_state_dict(join_arrays(json.loads(json.dumps(document)), arrays))
    plan, want = play(original, 2, params)
    for other in (resumed, again):
        other_plan, got = play(other, 2, params)
        assert other_plan == plan
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-12)


def test_load_state_dict_rejects_other_strategy():
    with pytest.raises(ConfigurationError, match="holds FedAvg state; this strategy is FedAdam"):
        FedAdam().load_state_dict(FedAvg().state_dict())


def test_split_arrays_rejects_unpicklable_state():
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        split_arrays({"x": object()})


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------

def test_fedprox_sends_mu_and_averages_like_fedavg():
    strategy = FedProx(0.01, on_fit_config_fn=lambda r: {"epochs": 2})
    plan = strategy.configure_fit(1, [], ["a", "b"])
    assert plan == [("a", {"epochs": 2, "proximal_mu": 0.01}),
                    ("b", {"epochs": 2, "proximal_mu": 0.01})]
    new, _ = run_round(strategy, 1, [np.zeros(2)], [fit("a", [1, 2], n=1), fit("b", [3, 6], n=3)])
    assert new[0].tolist() == [2.5, 5.0]


def test_fedavgm_two_rounds():
    strategy = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)
    # Round 1 average: (1*[0,2] + 1*[0,4]) / 2 = [0,3] -> see test_fedavgm_update_two_steps.
    x1, _ = run_round(strategy, 1, [np.array([1.0, 2.0])], [fit("a", [0.0, 2.0]),
                                                            fit("b", [0.0, 4.0])])
    np.testing.assert_allclose(x1[0], [0.5, 2.5])
    x2, _ = run_round(strategy, 2, x1, [fit("a", [0.5, 3.5], n=4)])
    np.testing.assert_allclose(x2[0], [0.05, 3.45])
    np.testing.assert_allclose(strategy.state_dict()["momentum"][0], [0.9, -1.9])
    # Defaults are plain FedAvg.
    plain, _ = run_round(FedAvgM(), 1, [np.zeros(2)],
                         [fit("a", [1, 2], n=1), fit("b", [3, 6], n=3)])
    assert plain[0].tolist() == [2.5, 5.0]


def opt_rounds(strategy):
    """Two rounds with 2 clients each whose weighted average is x + d: a sends x+d-e (n=1),
    b sends x+d+e/3 (n=3)."""
    e = np.array([0.3, 0.6, -0.9])
    x1, _ = run_round(strategy, 1, [X0], [fit("a", X0 + D1 - e, n=1),
                                          fit("b", X0 + D1 + e / 3, n=3)])
    x2, _ = run_round(strategy, 2, x1, [fit("a", x1[0] + D2 - e, n=1),
                                        fit("b", x1[0] + D2 + e / 3, n=3)])
    return x1[0], x2[0]


@pytest.mark.parametrize("make, want1, want2", [
    (lambda: FedAdam(**OPT), ADAM_X1, ADAM_X2),
    (lambda: FedYogi(**OPT), YOGI_X1, YOGI_X2),
    (lambda: FedAdagrad(eta=1.0, tau=0.5), ADAGRAD_X1, ADAGRAD_X2),
])
def test_fedopt_strategies_two_rounds(make, want1, want2):
    strategy = make()
    x1, x2 = opt_rounds(strategy)
    np.testing.assert_allclose(x1, want1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x2, want2, rtol=1e-12, atol=1e-12)
    assert set(strategy.state_dict()) >= {"m", "v", "rng_fit", "rng_evaluate"}


def test_fedopt_defaults_match_flower():
    adam, yogi, adagrad = FedAdam(), FedYogi(), FedAdagrad()
    assert (adam.eta, adam.eta_l, adam.beta_1, adam.beta_2, adam.tau) == (0.1, 0.1, 0.9, 0.99,
                                                                          1e-9)
    assert (yogi.eta, yogi.eta_l, yogi.beta_1, yogi.beta_2, yogi.tau) == (0.01, 0.0316, 0.9, 0.99,
                                                                          1e-3)
    assert (adagrad.eta, adagrad.eta_l, adagrad.tau) == (0.1, 0.1, 1e-9)


def test_fedopt_casts_back_to_float32_and_rounds_ints():
    params = [np.array([1.0, -1.0, 0.0], np.float32), np.array([5, 5], np.int32)]
    new, _ = run_round(FedAdagrad(eta=1.0, tau=0.5), 1, params,
                       [fit("a", params[0] + D1.astype(np.float32), np.array([7, 5], np.int32))])
    assert new[0].dtype == np.float32 and new[1].dtype == np.int32
    np.testing.assert_allclose(new[0], np.array(ADAGRAD_X1, np.float32))
    assert new[1].tolist() == [6, 5]  # 5 + 2/(2+0.5) = 5.8 -> 6 ; delta 0 -> 5


def test_fedmedian_and_trimmed_avg_strategies():
    params = [np.zeros(2, np.float32), np.zeros(1, np.int32)]
    results = [fit("a", [1, 5], [1], n=100), fit("b", [2, 3], [2], n=1),
               fit("c", [10, 4], [4], n=1), fit("d", [3, -8], [100], n=1)]
    new, _ = run_round(FedMedian(), 1, params, results)
    # medians: (1,2,3,10)->2.5 ; (-8,3,4,5)->3.5 ; (1,2,4,100)->3 ; unweighted
    assert new[0].dtype == np.float32 and new[0].tolist() == [2.5, 3.5]
    assert new[1].dtype == np.int32 and new[1].tolist() == [3]
    new, _ = run_round(FedTrimmedAvg(beta=0.25), 1, params, results)
    assert new[0].tolist() == [2.5, 3.5] and new[1].tolist() == [3]
    # beta=0.2 with 4 clients cuts int(0.8)=0: plain unweighted mean (16/4, 4/4, 107/4).
    new, _ = run_round(FedTrimmedAvg(), 1, params, results)
    assert new[0].tolist() == [4.0, 1.0] and new[1].tolist() == [27]


def test_krum_picks_honest_update_and_multikrum_averages():
    results = [fit(name, *KRUM_UPDATES[name], n=n) for name, n in zip("dcba", (1, 1, 3, 1))]
    params = [np.zeros(1), np.zeros(1)]
    # f=0: scores a=5 b=6 c=9 d=345 -> Krum keeps a, whatever the arrival order.
    new, _ = run_round(Krum(), 1, params, results)
    assert [a.tolist() for a in new] == [[0.0], [0.0]]
    # MultiKrum keeps a (n=1) and b (n=3): ([0]*1 + [1]*3)/4 = 0.75, second tensor 0.
    new, _ = run_round(MultiKrum(num_to_keep=2), 1, params, results)
    assert [a.tolist() for a in new] == [[0.75], [0.0]]
    # Keeping 3 (a, b, c with n=1,3,1): first (0+3+0)/5 = 0.6, second (0+0+2)/5 = 0.4; d out.
    new, _ = run_round(Krum(num_malicious=1, num_to_keep=3), 1, params, results)
    np.testing.assert_allclose([a[0] for a in new], [0.6, 0.4])


def test_every_strategy_is_a_strategy():
    for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian, FedTrimmedAvg, Krum):
        strategy = cls()
        assert isinstance(strategy, Strategy)
        assert (strategy.min_fit_clients, strategy.min_available_clients,
                strategy.min_evaluate_clients) == (1, 1, 1)


def test_import_does_not_load_tensorflow():
    code = ("import sys, pyfed.strategy; "
            "sys.exit(1 if any(m.split('.')[0] == 'tensorflow' for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_fold_multiplies_in_float64_not_in_the_update_dtype():
    """float16 updates weighted by large example counts must not overflow, and float32 ones
    must give the exactly rounded mean (regression: the product was taken in the input dtype)."""
    from pyfed.strategy.aggregate import weighted_average

    half = np.array([0.5, 2.0, -3.0], dtype=np.float16)
    result = weighted_average([[half], [half]], [40_000, 20_000])[0]
    assert result.dtype == np.float16 and np.array_equal(result, half)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(10_000).astype(np.float32), rng.standard_normal(10_000).astype(np.float32)
    exact = ((a.astype(np.float64) * 3 + b.astype(np.float64) * 7) / 10).astype(np.float32)
    assert np.array_equal(weighted_average([[a], [b]], [3, 7])[0], exact)


def _float64_fedavg(updates, counts):
    stack = np.stack([np.asarray(u, np.float64) for u in updates])
    return np.average(stack, axis=0, weights=counts)


def test_delta_sum_is_as_precise_as_a_float64_sum_for_round_sized_deltas():
    """FedAvg sums float32 deltas from the global weights (half a float64 accumulator). With
    1,000 clients whose deltas are 5% of the weights, every coordinate of the mean is within
    one float32 ulp *at the updates' magnitude* of the exact float64 result, as a float64 sum
    cast to float32 is; a plain float32 sum of the weights (Flower's) is not. (Where the mean
    cancels to nearly 0, neither float32 input could resolve finer than that ulp anyway.)"""
    rng = np.random.default_rng(7)
    size, clients = 20_000, 1_000
    base = rng.standard_normal(size).astype(np.float32)
    counts = rng.integers(1, 5_000, clients)
    updates = [(base + 0.05 * rng.standard_normal(size)).astype(np.float32) for _ in range(clients)]
    exact = _float64_fedavg(updates, counts)
    delta_sum = aggregate.WeightedSum([base], reference=[base])
    plain = np.zeros(size, np.float32)
    for update, count in zip(updates, counts):
        delta_sum.add([update], count)
        plain += update * np.float32(count)
    got = delta_sum.mean()[0]
    assert got.dtype == np.float32 and delta_sum.sums[0].dtype == np.float32
    ulp_of_inputs = np.spacing(np.float32(1)) * np.abs(np.stack(updates)).max(axis=0)
    delta_error = np.abs(got - exact) / ulp_of_inputs
    plain_error = np.abs(plain / np.float32(counts.sum()) - exact) / ulp_of_inputs
    assert delta_error.max() <= 1.0, delta_error.max()
    assert plain_error.max() > 4.0  # the comparison means something


def test_delta_sum_mean_in_place_reuses_the_accumulator_and_keeps_other_dtypes():
    rng = np.random.default_rng(3)
    base = [rng.standard_normal((6, 5)).astype(np.float32), np.arange(4, dtype=np.int64),
            rng.standard_normal(3).astype(np.float16), rng.standard_normal(2)]
    updates = [[(base[0] + rng.standard_normal((6, 5))).astype(np.float32),
                base[1] + k, (base[2] + 1).astype(np.float16), base[3] * k] for k in range(1, 4)]
    counts = [3, 1, 6]
    summed = aggregate.WeightedSum(base, reference=base)
    assert [s.dtype for s in summed.sums] == [np.float32, np.float64, np.float64, np.float64]
    for update, count in zip(updates, counts):
        summed.add(update, count)
    accumulator = summed.sums[0]
    mean = summed.mean(in_place=True)
    assert mean[0] is accumulator  # no second model-sized array
    assert [m.dtype for m in mean] == [np.float32, np.int64, np.float16, np.float64]
    for index in range(4):
        want = _float64_fedavg([u[index] for u in updates], counts)
        if index == 1:
            want = np.rint(want)
        np.testing.assert_allclose(mean[index].astype(np.float64), want, rtol=2e-3 if index == 2 else 1e-6)
    assert np.array_equal(base[1], np.arange(4))  # the reference is never modified


def test_delta_sum_cannot_overflow_at_the_largest_accepted_values():
    from pyfed.server.collect import MAX_ABS_VALUE

    base = [np.full(4, -MAX_ABS_VALUE, np.float32)]
    summed = aggregate.WeightedSum(base, reference=base)
    high = np.full(4, MAX_ABS_VALUE, np.float32)
    for _ in range(100):
        summed.add([high], 10**9)  # the largest default num_examples
    mean = summed.mean()[0]
    assert np.isfinite(mean).all()
    np.testing.assert_allclose(mean, high, rtol=1e-5)


def test_weighted_sum_rejects_a_reference_that_does_not_match():
    with pytest.raises(ValueError, match=r"reference array 0 is float64\[3\]; expected float32\[3\]"):
        aggregate.WeightedSum([np.zeros(3, np.float32)], reference=[np.zeros(3)])
    with pytest.raises(ValueError, match="reference has 2 arrays; expected 1"):
        aggregate.WeightedSum([np.zeros(3, np.float32)], reference=[np.zeros(3)] * 2)


def _fedavg_round(strategy, server_round, current, updates):
    strategy.begin(server_round, current)
    for index, (update, count) in enumerate(updates):
        strategy.add(FitResult(f"c{index}", tuple(update), count))
    return strategy.finish()[0]


def _assert_all_close(got, want):  # a function, so no loop variable keeps a result alive
    for array, expected in zip(got, want):
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5)


def test_fedavg_recycles_accumulator_memory_only_once_nothing_references_it():
    """FedAvg's accumulator becomes the next global model; memory from an earlier round is
    written again only when no array, view or memoryview of it is left anywhere."""
    rng = np.random.default_rng(11)
    shapes = [(300, 20), (20,), (0,), (20, 7)]
    strategy = FedAvg()
    current = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    held = []  # what a user (or a slow reader) kept of each round's result
    for server_round in range(1, 7):
        updates = [([c + rng.standard_normal(c.shape).astype(np.float32) for c in current], k)
                    for k in (1, 2, 3)]
        want = [_float64_fedavg([u[0][i] for u in updates], [1, 2, 3]).astype(np.float32)
                for i in range(len(shapes))]
        current = _fedavg_round(strategy, server_round, current, updates)
        _assert_all_close(current, want)
        if server_round == 2:
            held = [np.array(a) for a in current], memoryview(current[3])  # a copy, and a view
    # Round 2's result was held (through a memoryview of one tensor): never overwritten.
    copies, view = held
    np.testing.assert_array_equal(np.asarray(view), copies[3])
    assert strategy._blocks.reused >= 2  # the others were reused
    # Without the view, its memory is reused too.
    reused = strategy._blocks.reused
    del view, held
    for server_round in range(7, 10):
        current = _fedavg_round(strategy, server_round, current, [(current, 1)])
    assert strategy._blocks.reused == reused + 3


def test_recycled_blocks_hand_out_a_block_only_when_unreferenced():
    blocks = aggregate.RecycledBlocks(keep=2)
    first = blocks.take(1000)
    alive = first[10:20]  # a view keeps the block alive
    del first
    second = blocks.take(1000)
    assert not np.shares_memory(second, alive)
    del second
    third = blocks.take(1000)  # the second block is free again
    assert blocks.reused == 1 and not np.shares_memory(third, alive)
    assert blocks.take(999).nbytes == 999  # another size: a new block


def test_the_last_fold_computes_the_same_mean_in_the_same_pass():
    """add(last=True) turns each chunk into the mean as it folds it: bitwise the same result as
    folding then calling mean(), and nothing can be added after it."""
    rng = np.random.default_rng(5)
    base = [rng.standard_normal((700, 300)).astype(np.float32), rng.standard_normal(9),
            np.arange(5, dtype=np.int32)]
    updates = [[(base[0] + rng.standard_normal((700, 300))).astype(np.float32),
                base[1] * k, base[2] + k] for k in range(1, 4)]
    counts = [7, 2, 5]
    two_pass = aggregate.WeightedSum(base, reference=base)
    fused = aggregate.WeightedSum(base, reference=base)
    for index, (update, count) in enumerate(zip(updates, counts)):
        two_pass.add(update, count)
        fused.add(update, count, last=index == len(updates) - 1)
    want = two_pass.mean()
    assert fused.means_ready
    copies = fused.mean()  # not in place: copies
    assert not np.shares_memory(copies[0], fused.sums[0])
    got = fused.mean(in_place=True)
    assert got[0] is fused.sums[0]
    for mean in (copies, got):
        for a, b in zip(mean, want):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="cannot add after the last update"):
        fused.add(updates[0], 1)


def test_fedavg_add_last_finishes_like_add_and_subclasses_keep_their_fold():
    rng = np.random.default_rng(9)
    current = [rng.standard_normal((50, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    results = [fit(f"c{k}", *[c + k for c in current], n=k) for k in (1, 2, 3)]

    def run(strategy, use_last):
        strategy.begin(1, current)
        for result in results[:-1]:
            strategy.add(result)
        (strategy.add_last if use_last else strategy.add)(results[-1])
        return strategy.finish()

    plain, plain_metrics = run(FedAvg(), use_last=False)
    fused, fused_metrics = run(FedAvg(), use_last=True)
    assert plain_metrics == fused_metrics
    for a, b in zip(plain, fused):
        np.testing.assert_array_equal(a, b)

    class Counting(FedAvg):  # a subclass with its own fold still sees every result
        def _accumulate(self, result):
            self.seen = getattr(self, "seen", 0) + 1
            super()._accumulate(result)

    counting = Counting()
    counted, _ = run(counting, use_last=True)
    assert counting.seen == 3
    for a, b in zip(plain, counted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("clients", [3, 16, 17, 40])
def test_fedavg_sums_small_rounds_plainly_and_large_ones_as_deltas(clients):
    """Up to PLAIN_SUM_MAX_CLIENTS, FedAvg sums the float32 weights themselves (no second read
    of the global weights); above, the deltas from them. Both match their own WeightedSum
    bitwise, and the plain sum stays within N - 1 float32 steps of the exact float64 mean."""
    from pyfed.strategy.fedavg import PLAIN_SUM_MAX_CLIENTS

    rng = np.random.default_rng(clients)
    current = [rng.standard_normal(3_000).astype(np.float32), np.arange(3, dtype=np.int64)]
    updates = [[(current[0] + 0.05 * rng.standard_normal(3_000)).astype(np.float32), current[1] + k]
               for k in range(clients)]
    counts = rng.integers(1, 2_000, clients)
    strategy = FedAvg()
    plan = strategy.configure_fit(1, current, [f"c{k:03d}" for k in range(clients)])
    assert len(plan) == clients
    strategy.begin(1, current)
    for k, (update, count) in enumerate(zip(updates, counts)):
        result = FitResult(f"c{k:03d}", tuple(update), int(count))
        (strategy.add_last if k == clients - 1 else strategy.add)(result)
    got, _ = strategy.finish()
    plain = clients <= PLAIN_SUM_MAX_CLIENTS
    own = aggregate.WeightedSum(current, reference=None if plain else current, own_dtype=True)
    for update, count in zip(updates, counts):
        own.add(update, int(count))
    np.testing.assert_array_equal(got[0], own.mean()[0])
    np.testing.assert_array_equal(got[1], np.rint(_float64_fedavg([u[1] for u in updates], counts)))
    exact = _float64_fedavg([u[0] for u in updates], counts)
    steps = np.abs(got[0] - exact) / (np.spacing(np.float32(1)) * np.abs(np.stack([u[0] for u in updates])).max(axis=0))
    assert steps.max() <= (clients - 1 if plain else 1.0), steps.max()


# ---------------------------------------------------------------------------------------------
# max_update_norm: norm-bounded updates (clip or reject), and the metric-name cap
# ---------------------------------------------------------------------------------------------

ALL_STRATEGIES = [
    (FedAvg, {}), (FedProx, {"proximal_mu": 0.1}), (FedAvgM, {"server_momentum": 0.5}),
    (FedAdam, {}), (FedYogi, {}), (FedAdagrad, {}), (FedMedian, {}),
    (FedTrimmedAvg, {"beta": 0.0}), (Krum, {}), (MultiKrum, {"num_to_keep": 2}),
]


def _norm(update, reference):
    return float(np.sqrt(sum(np.sum((np.asarray(u, F64) - np.asarray(r, F64)) ** 2)
                             for u, r in zip(update, reference) if np.asarray(u).dtype.kind == "f")))


def test_update_norm_matches_numpy_over_float_tensors_in_chunks_and_never_overflows():
    from pyfed.strategy.aggregate import CHUNK_ELEMENTS

    rng = np.random.default_rng(3)
    reference = [rng.standard_normal(2 * CHUNK_ELEMENTS + 7).astype(np.float32),
                 rng.standard_normal((3, 4)), np.arange(5), rng.standard_normal(9).astype(np.float16)]
    update = [reference[0] + rng.standard_normal(reference[0].size).astype(np.float32),
              reference[1] + 2.0, reference[2] + 1000, (reference[3] + 60000).astype(np.float16)]
    got = aggregate.update_norm(update, reference)
    assert got == pytest.approx(_norm(update, reference), rel=1e-6)  # the int tensor left out
    # Values near the accepted bound (1e18): float32 squares overflow, float64 does not.
    big = [np.full(3 * CHUNK_ELEMENTS, 9e17, np.float32)]
    assert aggregate.update_norm(big, [np.full(3 * CHUNK_ELEMENTS, -9e17, np.float32)]) == pytest.approx(
        1.8e18 * np.sqrt(3 * CHUNK_ELEMENTS), rel=1e-6)
    assert aggregate.update_norm([np.zeros(0, np.float32)], [np.zeros(0, np.float32)]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        aggregate.update_norm([np.zeros(3)], [np.zeros(4)])


def test_max_update_norm_clip_scales_each_delta_to_the_bound_before_the_mean():
    current = [np.array([1.0, 1.0, 1.0, 1.0], np.float32), np.array([0.5, -0.5], np.float16),
               np.array([10, 20], np.int64)]
    big = [current[0] + np.float32(3.0), current[1] + np.float16(4.0), current[2] + 7]
    small = [current[0] + np.float32(0.1), current[1], current[2] + 1]
    bound = 2.0
    norm_big = _norm(big, current)  # sqrt(4*9 + 2*16) = 8.25
    scale = bound / norm_big
    expected_big = [current[0] + scale * 3.0, current[1] + scale * 4.0, current[2] + 7]
    want = [(3 * np.asarray(e, F64) + 1 * np.asarray(s, F64)) / 4
            for e, s in zip(expected_big, small)]
    for last in (False, True):  # the fused last fold clips the same way
        strategy = FedAvg(max_update_norm=bound)
        strategy.configure_fit(1, current, ["a", "b"])  # a small round: still sums deltas
        strategy.begin(1, current)
        strategy.add(FitResult("a", tuple(big), 3))
        (strategy.add_last if last else strategy.add)(FitResult("b", tuple(small), 1))
        new, _ = strategy.finish()
        np.testing.assert_allclose(new[0], want[0], rtol=1e-6)
        np.testing.assert_allclose(new[1], want[1], rtol=1e-3)
        assert new[2].tolist() == np.rint(want[2]).tolist()  # integers are not clipped
        assert _norm(new[:2], current[:2]) <= bound * (1 + 1e-3)
    # A strategy's screen measures once: add() reuses the norm it attached.
    strategy = FedAvg(max_update_norm=bound)
    strategy.begin(1, current)
    screened = strategy.screen(FitResult("a", tuple(big), 3))
    assert screened.delta_norm == pytest.approx(norm_big, rel=1e-6)


def test_max_update_norm_reject_refuses_before_folding_and_names_norm_and_bound():
    from pyfed.errors import UpdateRejected

    current = [np.zeros(4, np.float32)]
    strategy = FedAvg(max_update_norm=1.0, update_norm_action="reject")
    strategy.begin(1, current)
    with pytest.raises(UpdateRejected) as info:
        strategy.screen(FitResult("evil", (np.full(4, 100.0, np.float32),), 5))
    assert str(info.value).startswith("update norm 200 exceeds max_update_norm 1 ")
    with pytest.raises(UpdateRejected):  # add() checks too (a caller that did not screen)
        strategy.add(FitResult("evil", (np.full(4, 100.0, np.float32),), 5))
    strategy.add(FitResult("ok", (np.full(4, 0.25, np.float32),), 1))  # norm 0.5: folded as is
    new, _ = strategy.finish()
    assert new[0].tolist() == [0.25] * 4
    with pytest.raises(UpdateRejected, match="must be finite"):
        strategy.begin(2, current)
        strategy.screen(FitResult("nan", (np.array([np.nan, 0, 0, 0], np.float32),), 1))


@pytest.mark.parametrize("make,options", ALL_STRATEGIES, ids=[c.__name__ for c, _ in ALL_STRATEGIES])
def test_every_strategy_takes_max_update_norm(make, options):
    from pyfed.errors import UpdateRejected

    rng = np.random.default_rng(0)
    current = [np.zeros(6, np.float32)]
    honest = [FitResult(f"h{i}", (rng.normal(0, 0.01, 6).astype(np.float32),), 10) for i in range(4)]
    evil = FitResult("evil", (np.full(6, 1e6, np.float32),), 10)
    rejecting = make(max_update_norm=0.5, update_norm_action="reject", **options)
    assert "max_update_norm=0.5" in repr(rejecting)
    rejecting.configure_fit(1, current, [r.client for r in honest] + ["evil"])
    rejecting.begin(1, current)
    with pytest.raises(UpdateRejected, match="max_update_norm 0.5"):
        rejecting.screen(evil)
    clipping = make(max_update_norm=0.5, **options)
    new, _ = run_round(clipping, 1, current, honest + [evil])
    assert np.all(np.isfinite(new[0]))
    if make in (FedAvg, FedProx, FedTrimmedAvg, Krum, MultiKrum):  # a mean or a pick of clipped
        assert _norm(new, current) <= 0.5 * (1 + 1e-6)
    if make is FedAvgM:  # heavy-ball momentum: the first step is the clipped mean itself
        assert _norm(new, current) <= 0.5 * (1 + 1e-6)


def test_max_update_norm_options_are_validated_and_none_costs_nothing():
    for value in (0, -1.0, float("inf"), float("nan"), "x", True, [1]):
        with pytest.raises(ConfigurationError) as info:
            FedAvg(max_update_norm=value)
        assert str(info.value).startswith("max_update_norm must be in (0, inf); received ")
    with pytest.raises(ConfigurationError) as info:
        Krum(max_update_norm=1.0, update_norm_action="drop")
    assert str(info.value) == "update_norm_action must be 'clip' or 'reject'; received 'drop'"
    assert FedAvg(max_update_norm=2).max_update_norm == 2.0
    # Unset: screen hands the result back untouched, and nothing else changes.
    strategy = FedAvg()
    strategy.begin(1, [np.zeros(2)])
    result = fit("a", [1.0, 2.0])
    assert strategy.screen(result) is result and result.delta_norm is None


def test_the_union_of_metric_names_is_capped_and_the_most_reported_names_win():
    from pyfed.wire.limits import MAX_METRICS

    honest = [(10, {"loss": 0.5, "accuracy": 0.9}) for _ in range(3)]
    inventive = [(10**6, {f"x{i:03d}": 1.0 for i in range(MAX_METRICS)}) for _ in range(2)]
    kept = aggregate.common_metrics(honest + inventive, MAX_METRICS)
    names = set().union(*(m for _, m in kept))
    assert len(names) == MAX_METRICS and {"loss", "accuracy"} <= names
    small = [(1, {"a": 1.0}), (2, {"b": 2.0})]
    assert aggregate.common_metrics(small, MAX_METRICS) is small  # under the cap: untouched
    strategy = FedAvg()
    _, metrics = run_round(strategy, 1, [np.zeros(1)],
                           [fit(f"c{i}", [1.0], n=n, **m) for i, (n, m) in enumerate(honest + inventive)])
    assert len(metrics) == MAX_METRICS and metrics["loss"] == pytest.approx(0.5)


def test_a_metrics_aggregation_fn_that_fails_costs_the_metrics_not_the_round(caplog):
    strategy = FedAvg(fit_metrics_aggregation_fn=lambda pairs: {
        "acc": sum(n * m["accuracy"] for n, m in pairs)})  # a client without "accuracy": KeyError
    new, metrics = run_round(strategy, 1, [np.zeros(1)],
                             [fit("a", [1.0], accuracy=0.5), fit("b", [3.0], loss=1.0)])
    assert new[0].tolist() == [2.0] and metrics == {}
    assert "KeyError" in caplog.text and "could not be aggregated" in caplog.text
