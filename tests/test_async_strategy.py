"""FedAsync and FedBuff: the staleness functions and both update rules against the papers'
formulas (Xie et al., 2019; Nguyen et al., 2022), hand-computed on small arrays. No sockets."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pyfed.errors import ConfigurationError, UpdateRejected
from pyfed.strategy import FedAsync, FedAvg, FedBuff, FitResult, join_arrays, split_arrays
from pyfed.strategy.async_rules import fedasync_mix, fedbuff_accumulate, fedbuff_step
from pyfed.strategy.staleness import check_staleness_options, staleness_weight

F64 = np.float64


def update(client, weights, *, staleness=0, base=None, n=1, **metrics):
    return FitResult(client, tuple(np.asarray(w) for w in weights), n, metrics,
                     staleness=staleness, base=None if base is None else tuple(base))


def copies(arrays):
    return [np.array(a, copy=True) for a in arrays]


# ---------------------------------------------------------------------------------------------
# Staleness functions
# ---------------------------------------------------------------------------------------------

def test_constant_staleness_is_one_at_any_staleness():
    assert [staleness_weight(s, "constant") for s in (0, 1, 7, 1000)] == [1.0] * 4


def test_polynomial_staleness_is_s_plus_one_to_the_minus_a():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == pytest.approx(0.5)  # (3 + 1) ** -0.5, FedBuff's 1/sqrt(1+s)
    assert staleness_weight(8, "polynomial", exponent=1.0) == pytest.approx(1 / 9)
    assert staleness_weight(2, "polynomial", exponent=2.0) == pytest.approx(1 / 9)
    assert [staleness_weight(s, "polynomial", exponent=0.0) for s in (0, 1, 50)] == [1.0] * 3
    assert staleness_weight(np.int64(3)) == pytest.approx(0.5)


def test_hinge_staleness_is_one_up_to_b_then_decays():
    a, b = 10, 4
    assert [staleness_weight(s, "hinge", hinge_a=a, hinge_b=b) for s in range(b + 1)] == [1.0] * 5
    assert staleness_weight(b + 1, "hinge", hinge_a=a, hinge_b=b) == pytest.approx(1 / 11)
    assert staleness_weight(b + 3, "hinge", hinge_a=a, hinge_b=b) == pytest.approx(1 / 31)
    assert staleness_weight(1, "hinge", hinge_a=2, hinge_b=0) == pytest.approx(1 / 3)
    assert staleness_weight(9, "hinge", hinge_a=0, hinge_b=0) == 1.0  # a = 0: no decay


def test_staleness_weight_refuses_negative_staleness_and_unknown_kinds():
    with pytest.raises(ValueError, match="staleness must be an integer >= 0; received -1"):
        staleness_weight(-1)
    with pytest.raises(ValueError, match="received 1.5"):
        staleness_weight(1.5)
    with pytest.raises(ConfigurationError, match="received 'linear'"):
        staleness_weight(0, "linear")


@pytest.mark.parametrize("options,message", [
    ({"kind": "exp"}, "staleness must be 'constant', 'polynomial' or 'hinge'; received 'exp'"),
    ({"exponent": -0.5}, "staleness_exponent must be in [0, inf); received -0.5"),
    ({"hinge_a": -1}, "hinge_a must be in [0, inf); received -1"),
    ({"hinge_b": -2}, "hinge_b must be in [0, inf); received -2"),
    ({"max_staleness": -1}, "max_staleness must be None or an integer >= 0; received -1"),
    ({"max_staleness": 2.5}, "max_staleness must be None or an integer >= 0; received 2.5"),
    ({"mixing": 0}, "mixing must be in (0, 1]; received 0"),
    ({"mixing": 1.5}, "mixing must be in (0, 1]; received 1.5"),
    ({"buffer_size": 0}, "buffer_size must be an integer >= 1; received 0"),
    ({"server_learning_rate": 0}, "server_learning_rate must be in (0, inf); received 0"),
])
def test_check_staleness_options_names_the_value_and_what_is_expected(options, message):
    with pytest.raises(ConfigurationError) as info:
        check_staleness_options(**options)
    assert str(info.value) == message
    check_staleness_options(max_staleness=0, mixing=1.0, buffer_size=1, server_learning_rate=2)


def test_the_strategies_validate_their_options():
    for make, message in [
            (lambda: FedAsync(mixing=0), "mixing must be in (0, 1]; received 0"),
            (lambda: FedAsync(staleness="exp"), "received 'exp'"),
            (lambda: FedAsync(staleness_exponent=-1), "staleness_exponent must be in [0, inf)"),
            (lambda: FedBuff(buffer_size=0), "buffer_size must be an integer >= 1; received 0"),
            (lambda: FedBuff(server_learning_rate=-1), "server_learning_rate must be in (0,"),
            (lambda: FedBuff(max_staleness=-3), "max_staleness must be None or an integer"),
            (lambda: FedBuff(hinge_b=-1), "hinge_b must be in [0, inf); received -1"),
            (lambda: FedBuff(update_norm_action="x"), "update_norm_action must be")]:
        with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")
                           .replace("[", r"\[").replace(")", r"\)")):
            make()


# ---------------------------------------------------------------------------------------------
# The update rules as pure functions
# ---------------------------------------------------------------------------------------------

def test_fedasync_mix_is_the_papers_convex_combination_in_place():
    current = [np.array([1.0, -2.0, 4.0]), np.array([[0.5]], np.float32)]
    client = [np.array([3.0, 0.0, 0.0]), np.array([[1.5]], np.float32)]
    written = fedasync_mix(current, client, 0.25)
    assert written is current
    np.testing.assert_allclose(current[0], 0.75 * np.array([1.0, -2.0, 4.0]) + 0.25 * client[0])
    assert current[1].dtype == np.float32 and current[1][0, 0] == pytest.approx(0.75)


def test_fedasync_mix_into_out_leaves_current_alone():
    current = [np.array([2.0, 4.0], np.float32)]
    out = [np.empty(2)]
    fedasync_mix(current, [np.array([0, 8], np.int64)], 0.5, out=out)
    assert current[0].tolist() == [2.0, 4.0]
    assert out[0].tolist() == [1.0, 6.0]
    with pytest.raises(ValueError, match="must be floating-point"):
        fedasync_mix([np.array([1, 2])], [np.array([1, 2])], 0.5)


def test_fedbuff_accumulate_and_step_are_the_mean_of_the_weighted_deltas():
    base_old, base_new = [np.array([0.0, 1.0])], [np.array([1.0, 1.0])]
    buffer = [np.zeros(2)]
    fedbuff_accumulate(buffer, [np.array([2.0, 3.0])], base_new, 1.0)   # delta (1, 2)
    fedbuff_accumulate(buffer, [np.array([4.0, 1.0])], base_old, 0.5)   # delta (4, 0), s=0.5
    np.testing.assert_allclose(buffer[0], [1.0 + 2.0, 2.0 + 0.0])
    current = [np.array([1.0, 1.0])]
    new = fedbuff_step(current, buffer, 2, 0.5)
    np.testing.assert_allclose(new[0], [1.0 + 0.5 * 3.0 / 2, 1.0 + 0.5 * 2.0 / 2])
    assert current[0].tolist() == [1.0, 1.0] and new[0] is not buffer[0]
    in_place = fedbuff_step(current, buffer, 2, 0.5, out=buffer)
    assert in_place is buffer
    np.testing.assert_allclose(buffer[0], new[0])
    with pytest.raises(ValueError, match="count must be >= 1"):
        fedbuff_step(current, buffer, 0, 1.0)


def test_the_rules_work_in_chunks_across_large_tensors():
    rng = np.random.default_rng(0)
    size = 300_001  # several chunks and a ragged last one
    current, client, base = (rng.normal(size=size) for _ in range(3))
    mixed = [current.copy()]
    fedasync_mix(mixed, [client], 0.3)
    np.testing.assert_allclose(mixed[0], 0.7 * current + 0.3 * client, rtol=1e-12, atol=1e-14)
    buffer = [np.zeros(size)]
    fedbuff_accumulate(buffer, [client], [base], 0.25)
    np.testing.assert_allclose(fedbuff_step([current], buffer, 1, 2.0)[0],
                               current + 2.0 * 0.25 * (client - base), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# FedAsync
# ---------------------------------------------------------------------------------------------

def test_fedasync_mixes_each_update_with_its_staleness_weight():
    strategy = FedAsync(mixing=0.5)  # polynomial, a = 0.5
    x0 = [np.array([0.0, 4.0]), np.array([[2.0]])]
    strategy.begin(1, x0)
    strategy.add(update("a", [[2.0, 0.0], [[4.0]]], staleness=0))
    assert strategy.ready()
    x1, _ = strategy.finish()
    alpha = 0.5  # 0.5 * (0 + 1) ** -0.5
    np.testing.assert_allclose(x1[0], [(1 - alpha) * 0 + alpha * 2, (1 - alpha) * 4 + 0])
    np.testing.assert_allclose(x1[1], [[(1 - alpha) * 2 + alpha * 4]])
    assert x0[0].tolist() == [0.0, 4.0]  # the caller's arrays are never written
    strategy.begin(2, x1)
    strategy.add(update("b", [[8.0, 8.0], [[0.0]]], staleness=3))
    x2, _ = strategy.finish()
    alpha = 0.5 * 4 ** -0.5
    np.testing.assert_allclose(x2[0], (1 - alpha) * x1[0] + alpha * np.array([8.0, 8.0]))
    np.testing.assert_allclose(x2[1], (1 - alpha) * x1[1])
    assert strategy.version_stats() == {"updates": 1, "staleness": [3], "clients": ["b"]}


def test_fedasync_hinge_and_two_updates_in_one_version():
    strategy = FedAsync(mixing=0.8, staleness="hinge", hinge_a=1, hinge_b=1)
    x = [np.array([10.0], np.float32)]
    strategy.begin(5, x)
    strategy.add(update("a", [[0.0]], staleness=1))   # s = 1: alpha 0.8
    strategy.add(update("b", [[20.0]], staleness=3))  # s = 1/(1*(3-1)+1): alpha 0.8/3
    new, _ = strategy.finish()
    first = 0.2 * 10.0
    want = (1 - 0.8 / 3) * first + (0.8 / 3) * 20.0
    assert new[0].dtype == np.float32
    assert new[0][0] == pytest.approx(want, rel=1e-6)


def test_fedasync_keeps_no_reference_to_the_update_and_publishes_fresh_arrays():
    strategy = FedAsync(mixing=1.0, staleness="constant")
    x = [np.zeros(4, np.float32)]
    weights = np.arange(4, dtype=np.float32)
    strategy.begin(1, x)
    strategy.add(update("a", [weights]))
    weights[:] = -99  # the pooled receive buffer is reused
    new, _ = strategy.finish()
    assert new[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert not np.shares_memory(new[0], x[0])


def test_fedasync_rounds_integer_tensors_and_casts_float16_back():
    strategy = FedAsync(mixing=0.5, staleness="constant")
    x = [np.array([10, 3], np.int32), np.array([1.0], np.float16)]
    strategy.begin(1, x)
    strategy.add(update("a", [np.array([13, 4], np.int32), np.array([2.0], np.float16)]))
    new, _ = strategy.finish()
    assert new[0].dtype == np.int32 and new[0].tolist() == [12, 4]  # 11.5 and 3.5 rounded
    assert new[1].dtype == np.float16 and new[1].tolist() == [1.5]


def test_fedasync_finish_without_updates_keeps_the_model():
    strategy = FedAsync()
    x = [np.array([1.0, 2.0])]
    strategy.begin(1, x)
    assert not strategy.ready()
    new, metrics = strategy.finish()
    assert new[0].tolist() == [1.0, 2.0] and metrics == {}
    with pytest.raises(RuntimeError, match="before begin"):
        strategy.finish()


# ---------------------------------------------------------------------------------------------
# FedBuff
# ---------------------------------------------------------------------------------------------

def test_fedbuff_buffers_k_weighted_deltas_then_steps():
    strategy = FedBuff(buffer_size=3, server_learning_rate=0.5)
    v3 = [np.array([1.0, 1.0])]  # the current version's weights
    v1 = [np.array([0.0, 2.0])]  # an older version a slow client trained from
    strategy.begin(3, v3)
    strategy.add(update("fast", [[2.0, 2.0]], base=v3, staleness=0, n=10, loss=1.0))
    strategy.add(update("slow", [[4.0, 0.0]], base=v1, staleness=2, n=30, loss=3.0))
    assert not strategy.ready()
    strategy.add(update("fast", [[1.0, 3.0]], base=v3, staleness=0, n=10, loss=1.0))
    assert strategy.ready()
    new, metrics = strategy.finish()
    s2 = 3 ** -0.5
    deltas = [1.0 * np.array([1.0, 1.0]), s2 * np.array([4.0, -2.0]), 1.0 * np.array([0.0, 2.0])]
    np.testing.assert_allclose(new[0], v3[0] + 0.5 * sum(deltas) / 3, rtol=1e-12)
    assert metrics == {"loss": pytest.approx((10 + 90 + 10) / 50)}  # examples-weighted
    assert strategy.version_stats() == {"updates": 3, "staleness": [0, 2, 0],
                                        "clients": ["fast", "slow", "fast"]}
    assert v3[0].tolist() == [1.0, 1.0]


def test_fedbuff_finish_resets_the_buffer_for_the_next_version():
    strategy = FedBuff(buffer_size=2, staleness="constant")
    x = [np.zeros(3, np.float32)]
    strategy.begin(1, x)
    for value in (1.0, 3.0):
        strategy.add(update("a", [np.full(3, value, np.float32)], base=x))
    x1, _ = strategy.finish()
    assert x1[0].tolist() == [2.0] * 3
    strategy.begin(2, x1)
    assert strategy.version_stats() == {"updates": 0, "staleness": [], "clients": []}
    strategy.add(update("a", [np.full(3, 4.0, np.float32)], base=x1))
    strategy.add(update("b", [np.full(3, 2.0, np.float32)], base=x1))
    x2, _ = strategy.finish()
    assert x2[0].tolist() == [3.0] * 3 and x1[0].tolist() == [2.0] * 3
    assert not np.shares_memory(x1[0], x2[0])


def test_fedbuff_finish_before_k_is_the_mean_of_what_arrived():
    strategy = FedBuff(buffer_size=10, staleness="constant")
    x = [np.array([1.0])]
    strategy.begin(1, x)
    strategy.add(update("a", [[3.0]], base=x))
    new, _ = strategy.finish()
    assert new[0].tolist() == [3.0]
    strategy.begin(2, x)
    assert strategy.finish()[0][0].tolist() == [1.0]  # nothing folded: unchanged


def test_fedbuff_needs_the_base_and_refuses_it_without_changing_state():
    strategy = FedBuff(buffer_size=2, staleness="constant")
    x = [np.array([0.0, 0.0])]
    strategy.begin(1, x)
    with pytest.raises(ValueError, match="FedBuff needs result.base"):
        strategy.add(update("a", [[1.0, 1.0]]))
    with pytest.raises(ValueError, match="does not match"):
        strategy.add(update("a", [[1.0, 1.0]], base=[np.zeros(3)]))
    assert strategy.version_stats()["updates"] == 0
    strategy.add(update("a", [[2.0, 4.0]], base=x))
    assert strategy.finish()[0][0].tolist() == [2.0, 4.0]


def test_fedbuff_rounds_integer_tensors_and_keeps_float16():
    strategy = FedBuff(buffer_size=2, staleness="constant")
    x = [np.array([5, 0], np.int64), np.array([0.5], np.float16)]
    strategy.begin(1, x)
    strategy.add(update("a", [np.array([6, 1]), np.array([1.0], np.float16)], base=x))
    strategy.add(update("b", [np.array([8, 0]), np.array([1.5], np.float16)], base=x))
    new, _ = strategy.finish()
    assert new[0].dtype == np.int64 and new[0].tolist() == [7, 0]  # 5 + 2, 0 + 0.5 -> 0
    assert new[1].dtype == np.float16 and new[1].tolist() == [1.25]


def test_fedbuff_measures_and_clips_the_delta_from_the_clients_base():
    strategy = FedBuff(buffer_size=1, staleness="constant", max_update_norm=1.0)
    current = [np.array([100.0, 0.0])]
    base = [np.array([0.0, 0.0])]
    # 0.6 from its base, 100 from the current model: measured from the base, within the bound.
    near = strategy.screen(update("a", [[0.6, 0.0]], base=base))
    assert near.delta_norm == pytest.approx(0.6)
    strategy.begin(1, current)
    strategy.add(update("b", [[0.0, 4.0]], base=base))  # delta norm 4: clipped to 1
    np.testing.assert_allclose(strategy.finish()[0][0], [100.0, 1.0])
    rejecting = FedBuff(max_update_norm=1.0, update_norm_action="reject")
    with pytest.raises(UpdateRejected, match="max_update_norm 1"):
        rejecting.screen(update("c", [[0.0, 4.0]], base=base))


# ---------------------------------------------------------------------------------------------
# Both: max_staleness, configs, checkpoints, the async flag
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: FedAsync(max_staleness=3),
                                  lambda: FedBuff(buffer_size=2, max_staleness=3)])
def test_max_staleness_refuses_before_changing_any_state(make):
    x = [np.array([1.0, 2.0])]
    strategy, reference = make(), make()
    for s in (strategy, reference):
        s.begin(7, x)
        s.add(update("a", [[3.0, 3.0]], base=x, staleness=1, loss=0.5))
    stale = update("slow", [[50.0, 50.0]], base=x, staleness=5, loss=9.0)
    with pytest.raises(UpdateRejected) as info:
        strategy.add(stale)
    assert str(info.value) == "update is 5 versions stale; max_staleness is 3"
    with pytest.raises(UpdateRejected, match="5 versions stale"):
        strategy.screen(stale)
    with pytest.raises(UpdateRejected, match="claims a version after the current one"):
        strategy.add(update("future", [[0.0, 0.0]], base=x, staleness=-1))
    strategy.add(update("ok", [[0.0, 0.0]], base=x, staleness=3))  # at the bound: counted
    reference.add(update("ok", [[0.0, 0.0]], base=x, staleness=3))
    assert strategy.version_stats() == reference.version_stats()
    (got,), got_metrics = strategy.finish()
    (want,), want_metrics = reference.finish()
    assert got.tolist() == want.tolist() and got_metrics == want_metrics


@pytest.mark.parametrize("make", [FedAsync, FedBuff])
def test_every_offered_client_gets_a_job_with_the_fit_config(make):
    strategy = make(on_fit_config_fn=lambda version: {"version": version, "epochs": 2},
                    min_available_clients=5)
    plan = strategy.configure_fit(4, [np.zeros(1)], ["c", "a", "b", "a"])
    assert plan == [(name, {"version": 4, "epochs": 2}) for name in ("a", "b", "c")]
    assert strategy.configure_fit(5, [np.zeros(1)], []) == []


def test_the_asynchronous_flag_picks_the_driver():
    assert FedAvg.asynchronous is False and FedAvg().asynchronous is False
    assert FedAsync.asynchronous is True and FedBuff().asynchronous is True
    assert isinstance(FedBuff(), FedAvg) and isinstance(FedAsync(), FedAvg)
    assert "max_update_norm=0.5" in repr(FedBuff(max_update_norm=0.5))
    assert repr(FedAsync(staleness="hinge")).startswith("FedAsync(mixing=0.6, staleness='hinge'")


def through_a_checkpoint(state, as_lists=False):
    document, arrays = split_arrays(state)
    if as_lists:
        arrays = [a.tolist() for a in arrays]
    return join_arrays(json.loads(json.dumps(document)), arrays)


@pytest.mark.parametrize("as_lists", [False, True])
def test_fedbuff_state_dict_mid_buffer_resumes_to_the_same_result(as_lists):
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(3, 2)).astype(np.float32), np.array([4, 5], np.int32)]
    older = [rng.normal(size=(3, 2)).astype(np.float32), np.array([4, 4], np.int32)]
    results = [update(f"c{i}", [x[0] + rng.normal(size=(3, 2)).astype(np.float32), x[1] + i],
                      base=older if i % 2 else x, staleness=2 * (i % 2), n=i + 1, acc=i / 4)
               for i in range(4)]
    original = FedBuff(buffer_size=4, server_learning_rate=0.7)
    original.begin(9, x)
    for result in results[:2]:
        original.add(result)
    state = through_a_checkpoint(original.state_dict(), as_lists)
    resumed = FedBuff(buffer_size=4, server_learning_rate=0.7)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["buffer"]["count"] == 2  # pending until begin: still saved
    resumed.begin(9, copies(x))
    assert resumed.version_stats() == original.version_stats()
    late = FedBuff(buffer_size=4, server_learning_rate=0.7)  # loaded after its begin
    late.begin(9, copies(x))
    late.load_state_dict(state)
    for strategy in (original, resumed, late):
        for result in results[2:]:
            strategy.add(result)
        assert strategy.ready()
    want, want_metrics = original.finish()
    for strategy in (resumed, late):
        got, metrics = strategy.finish()
        assert metrics == pytest.approx(want_metrics)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.tolist() == w.tolist()
        assert strategy.version_stats() == original.version_stats()


def test_fedbuff_checkpoint_between_versions_and_a_version_mismatch():
    strategy = FedBuff(buffer_size=2)
    x = [np.zeros(2)]
    assert strategy.state_dict()["buffer"] is None
    strategy.begin(1, x)
    strategy.add(update("a", [[1.0, 1.0]], base=x))
    state = through_a_checkpoint(strategy.state_dict())
    other = FedBuff(buffer_size=2)
    other.load_state_dict(state)
    with pytest.raises(ConfigurationError, match="buffer of version 1 .1 updates.; version 2"):
        other.begin(2, x)
    with pytest.raises(ConfigurationError, match="holds FedBuff state; this strategy is FedAsync"):
        FedAsync().load_state_dict(state)
    broken = dict(state, buffer=dict(state["buffer"], count=3))
    with pytest.raises(ConfigurationError, match="count 3 does not match"):
        FedBuff().load_state_dict(broken)


def test_fedasync_state_is_fedavgs():
    state = through_a_checkpoint(FedAsync(seed=3).state_dict())
    assert state["strategy"] == "FedAsync" and "buffer" not in state
    FedAsync().load_state_dict(state)


def test_importing_the_async_strategies_loads_no_server_or_network_module():
    code = ("import sys, json\nfrom pyfed.strategy import FedAsync, FedBuff\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [name for name in loaded if name.split(".")[0] in ("tensorflow", "keras", "cloudpickle")
             or name.startswith(("pyfed.server", "pyfed.client", "pyfed.wire.transport"))]
    assert heavy == []
    assert "pyfed.strategy.asynchronous" in loaded


def test_fedbuff_refuses_a_checkpoint_buffer_of_another_shape_and_keeps_it_pending():
    strategy = FedBuff(buffer_size=2)
    x = [np.zeros(2)]
    strategy.begin(1, x)
    strategy.add(update("a", [[1.0, 1.0]], base=x))
    state = through_a_checkpoint(strategy.state_dict())
    other = FedBuff(buffer_size=2)
    other.load_state_dict(state)
    with pytest.raises(ConfigurationError, match="does not match the model's shapes"):
        other.begin(1, [np.zeros(3)])
    assert other.state_dict()["buffer"]["count"] == 1
