"""The pure half of differential privacy (issue 14): the accountant and the DP arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from pyfed.errors import ConfigurationError
from pyfed.privacy import (PrivacyLedger, adaptive_noise_multiplier, clip_delta, delta_norm,
                           epsilon, gaussian_noise_std, noised_clipped_fraction,
                           update_clipping_norm, validate_dp_config)


def dp_accounting_epsilon(q, z, rounds, delta):
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.rdp import RdpAccountant
    accountant = RdpAccountant()
    accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(z)), rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("q, z, rounds", [(0.25, 1.1, 50), (1.0, 2.0, 10), (0.05, 0.8, 200)])
def test_epsilon_equals_dp_accountings_own_figure(q, z, rounds):
    assert epsilon(q, z, rounds, 1e-5) == pytest.approx(dp_accounting_epsilon(q, z, rounds, 1e-5),
                                                        rel=1e-12)


def test_epsilon_grows_with_rounds_and_is_zero_before_any():
    values = [epsilon(0.25, 1.1, rounds, 1e-5) for rounds in (0, 1, 10, 100)]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:]))


def test_no_noise_is_infinite_epsilon():
    assert epsilon(0.5, 0.0, 3, 1e-5) == math.inf


def test_ledger_counts_rounds_and_survives_a_checkpoint_round_trip():
    ledger = PrivacyLedger(q=0.25, noise_multiplier=1.1, target_delta=1e-5)
    for _ in range(7):
        ledger.record_round()
    assert ledger.epsilon() == pytest.approx(dp_accounting_epsilon(0.25, 1.1, 7, 1e-5))
    resumed = PrivacyLedger(q=0.25, noise_multiplier=1.1, target_delta=1e-5)
    resumed.load_state_dict(ledger.state_dict())
    assert resumed.rounds == 7
    resumed.record_round()
    assert resumed.epsilon() == pytest.approx(dp_accounting_epsilon(0.25, 1.1, 8, 1e-5))


def test_ledger_refuses_a_checkpoint_accounted_under_other_parameters():
    state = PrivacyLedger(q=0.25, noise_multiplier=1.1).state_dict()
    with pytest.raises(ConfigurationError, match="noise_multiplier=1.1"):
        PrivacyLedger(q=0.25, noise_multiplier=2.0).load_state_dict(state)


def test_would_exceed_looks_one_round_ahead():
    ledger = PrivacyLedger(q=0.25, noise_multiplier=1.1, target_delta=1e-5)
    for _ in range(4):
        ledger.record_round()
    at_five = dp_accounting_epsilon(0.25, 1.1, 5, 1e-5)
    assert not ledger.would_exceed(at_five)         # the 5th round lands exactly on the budget
    assert ledger.would_exceed(at_five * 0.999)     # ... and would go past a smaller one
    assert not ledger.would_exceed(None)


def test_clipping_never_exceeds_c_even_for_a_huge_update():
    rng = np.random.default_rng(0)
    reference = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32),
                 np.array(12, dtype=np.int64)]
    update = [w + 1000 for w in reference[:2]] + [np.array(13, dtype=np.int64)]
    for clip in (0.01, 1.0, 7.5):
        clipped, norm = clip_delta(update, reference, clip)
        assert norm == pytest.approx(1000 * math.sqrt(18), rel=1e-5)
        assert delta_norm(clipped, reference) <= clip * (1 + 1e-5)
        assert delta_norm(clipped, reference) == pytest.approx(clip, rel=1e-4)
        assert [c.dtype for c in clipped] == [u.dtype for u in update]
        assert int(clipped[2]) == 13        # an integer counter is neither clipped nor counted


def test_clipping_leaves_a_small_update_alone():
    reference = [np.zeros(4)]
    update = [np.array([0.1, 0.0, 0.0, 0.0])]
    clipped, norm = clip_delta(update, reference, 1.0)
    assert norm == pytest.approx(0.1)
    np.testing.assert_array_equal(clipped[0], update[0])


def test_noise_std_is_z_c_over_q_n():
    assert gaussian_noise_std(1.2, 0.5, 0.25, 20) == pytest.approx(1.2 * 0.5 / (0.25 * 20))
    assert gaussian_noise_std(0.0, 0.5, 0.25, 20) == 0.0


def test_adaptive_clipping_moves_c_toward_the_target_quantile():
    rng = np.random.default_rng(1)
    norms_population = rng.lognormal(mean=0.0, sigma=0.5, size=100_000)
    target = 0.5
    true_median = float(np.median(norms_population))
    clipping_norm = 0.05                    # far below the median: most updates clipped
    expected_clients = 100
    for _ in range(300):
        sample = rng.choice(norms_population, size=expected_clients)
        fraction = noised_clipped_fraction(sample, clipping_norm, expected_clients / 20,
                                           expected_clients, rng)
        clipping_norm = update_clipping_norm(clipping_norm, fraction, target, 0.2)
    assert clipping_norm == pytest.approx(true_median, rel=0.25)


def test_geometric_step_direction():
    assert update_clipping_norm(1.0, 0.9, 0.5, 0.2) == pytest.approx(math.exp(-0.2 * 0.4))
    assert update_clipping_norm(1.0, 0.1, 0.5, 0.2) > 1.0


def test_noised_count_without_noise_is_the_fraction_under_c():
    rng = np.random.default_rng(2)
    assert noised_clipped_fraction([0.5, 1.0, 2.0, 3.0], 1.0, 0.0, 4, rng) == 0.5


def test_adjusted_noise_multiplier_follows_theorem_1():
    z, sigma_b = 1.0, 5.0
    z_delta = adaptive_noise_multiplier(z, sigma_b)
    assert z_delta == pytest.approx((z ** -2 - (2 * sigma_b) ** -2) ** -0.5)
    # the two queries together cost what one query of multiplier z costs
    assert z_delta ** -2 + (2 * sigma_b) ** -2 == pytest.approx(z ** -2)
    assert z_delta > z
    assert adaptive_noise_multiplier(0.0, 5.0) == 0.0
    with pytest.raises(ConfigurationError, match="2\\*sigma_b > noise_multiplier"):
        adaptive_noise_multiplier(2.0, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_multiplier": -0.5}, "noise_multiplier must be .*-0.5"),
    ({"clipping_norm": 0}, "clipping_norm must be .*got 0"),
    ({"clipping_norm": -1.0}, "clipping_norm must be .*-1.0"),
    ({"sampling_rate": 0}, "q .*must be in \\(0, 1\\], got 0"),
    ({"sampling_rate": 1.5}, "q .*must be in \\(0, 1\\], got 1.5"),
])
def test_nonsense_configurations_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        validate_dp_config(**kwargs)


def test_accounting_refuses_nonsense_too():
    with pytest.raises(ConfigurationError, match="got 2"):
        epsilon(2, 1.0, 10, 1e-5)
    with pytest.raises(ConfigurationError, match="target_delta"):
        PrivacyLedger(q=0.5, noise_multiplier=1.0, target_delta=0)
    validate_dp_config(0.0, 1.0, 1.0)   # the edges that make sense pass


def test_importing_pyfed_privacy_loads_no_heavy_dependency():
    code = "import sys, json, pyfed.privacy; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [name for name in ("dp_accounting", "cryptography", "scipy", "tensorflow")
                if name in loaded]
