"""Secure aggregation end to end: a real server process and real client processes over
loopback, the unchanged FL_Client, and the SecAgg stages on the wire.

Clients are deterministic (tests/secagg_roles.py: client i moves the model by a fixed shift and
reports 100*i examples), so the FedAvg result is known exactly; a secure run must give it within
the quantization error. Processes run in a ProcessGroup (ended by PID, always reaped).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tagged
from procs import ProcessGroup, free_port
from test_faults import wait_exit, wait_for_output

from pyfed.errors import ConfigurationError

ROLES = str(Path(__file__).with_name("secagg_roles.py"))
SHAPES = "20x10,10"


def start(group, name, *args):
    return group.start(name, [sys.executable, ROLES, *args])


def run_federation(tmp_path, *, clients=3, rounds=1, secagg=None, plain=False, dying=(),
                   extra=(), timeout=120):
    """Server and ``clients`` client processes; the server's RESULT and the group's outputs."""
    port = free_port()
    logdir = tmp_path / "logs"
    group = ProcessGroup(tmp_path / f"procs_{'plain' if plain else 'secure'}")
    try:
        server = ["server", "--port", port, "--logdir", logdir, "--clients", clients,
                  "--rounds", rounds, "--shapes", SHAPES, *extra]
        if plain:
            server.append("--plain")
        if secagg is not None:
            server += ["--secagg-options", json.dumps(secagg)]
        start(group, "server", *server)
        wait_for_output(group, "server", r"^READY \d+", 60)
        for i in range(1, clients + 1):
            args = ["client", "--port", port, "--logdir", logdir, "--index", i, "--shapes", SHAPES]
            if i in dying:
                args.append("--die-at-fit")
            start(group, f"client_{i}", *args)
        rc = wait_exit(group, "server", timeout)
        output = group.output("server")
        return rc, output, group.dump()
    finally:
        group.close()


def expected_fedavg(indices, shapes=((20, 10), (10,)), max_weight=1000.0):
    """The examples-weighted mean of the clients' models after one round."""
    import secagg_roles

    start_weights = secagg_roles.initial_weights(list(shapes))
    weights = np.array([min(100 * i / max_weight, 1.0) for i in indices])
    models = [[w.astype(np.float64) + s for w, s in zip(start_weights, secagg_roles.shift(i, list(shapes)))]
              for i in indices]
    return [sum(wt * m[k] for wt, m in zip(weights, models)) / weights.sum()
            for k in range(len(start_weights))]


def final_weights(output):
    return [np.array(w) for w in tagged(output, "RESULT")["weights"]]


def test_secure_round_equals_plain_fedavg_within_quantization_error(tmp_path):
    rc, secure_out, dump = run_federation(tmp_path / "secure", clients=3)
    assert rc == 0, dump
    rc, plain_out, dump = run_federation(tmp_path / "plain", clients=3, plain=True)
    assert rc == 0, dump
    secure, plain = final_weights(secure_out), final_weights(plain_out)
    expected = expected_fedavg([1, 2, 3])
    for s, p, e in zip(secure, plain, expected):
        # float32 model: both within float32 rounding of the exact mean; quantization adds
        # about 1e-6 relative for 3 clients in a 32-bit ring.
        np.testing.assert_allclose(p, e, atol=1e-5)
        np.testing.assert_allclose(s, e, atol=1e-4)
        assert not np.array_equal(s, np.zeros_like(s))
    history = tagged(secure_out, "RESULT")["history"]
    assert history["history"]["participants"] == [3]


def test_client_killed_after_key_sharing_is_recovered(tmp_path):
    rc, output, dump = run_federation(tmp_path, clients=4, dying=(4,),
                                      extra=["--round-timeout", "20"])
    assert rc == 0, dump
    secure = final_weights(output)
    for s, e in zip(secure, expected_fedavg([1, 2, 3])):
        np.testing.assert_allclose(s, e, atol=1e-4)
    assert "recovered from 1 dropped client: client_4" in output, output
    assert tagged(output, "RESULT")["history"]["history"]["participants"] == [3]


def test_too_few_survivors_fails_the_round_clearly(tmp_path):
    rc, output, dump = run_federation(
        tmp_path, clients=3, dying=(2, 3), secagg={"reconstruction_threshold": 2},
        extra=["--round-timeout", "15"])
    assert rc != 0, dump
    assert "secure aggregation needs 2" in output, output
    assert "1 of 3 clients sent its masked update" in output, output


def test_refusals_name_what_secure_aggregation_cannot_do():
    from pyfed.privacy import SecureAggregation
    from pyfed.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

    for strategy in (FedMedian(), FedTrimmedAvg(), Krum()):
        with pytest.raises(ConfigurationError, match="needs every client's update"):
            SecureAggregation(strategy)
    with pytest.raises(ConfigurationError, match="max_update_norm"):
        SecureAggregation(FedAvg(max_update_norm=1.0))
    with pytest.raises(ConfigurationError, match="modulus_bits"):
        SecureAggregation(modulus_bits=8)
    from pyfed.components import FL_Server
    from pyfed.models import NumpyModel

    with pytest.raises(ConfigurationError, match="compression"):
        FL_Server(NumpyModel([np.zeros(3, np.float32)]), 3, 1,
                  strategy=SecureAggregation(), compression="int8")


def test_threshold_defaults_to_two_thirds_and_never_below_two():
    from pyfed.privacy import SecureAggregation

    strategy = SecureAggregation()
    assert [strategy.threshold(n) for n in (2, 3, 4, 10, 20)] == [2, 2, 3, 7, 14]
    assert SecureAggregation(reconstruction_threshold=0.5).threshold(10) == 5
    assert SecureAggregation(reconstruction_threshold=4).threshold(3) == 3


def clipped(delta, clip_norm):
    norm = np.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta))
    return [d * min(1.0, clip_norm / norm) for d in delta]


def test_secure_aggregation_composes_with_client_side_dp_clipping(tmp_path):
    """SecureAggregation(DifferentialPrivacy(FedAvg(), clipping="client")): each client clips
    its change to C before masking, the server adds nothing it cannot see; with z = 0 and q = 1
    the new model is the global plus the mean of the clipped changes, within quantization."""
    import secagg_roles

    clip_norm = 0.5
    rc, output, dump = run_federation(
        tmp_path, clients=3, extra=["--dp-options", json.dumps(
            {"noise_multiplier": 0.0, "clipping_norm": clip_norm})])
    assert rc == 0, dump
    shapes = [(20, 10), (10,)]
    start_weights = secagg_roles.initial_weights(shapes)
    deltas = [clipped([s.astype(np.float64) for s in secagg_roles.shift(i, shapes)], clip_norm)
              for i in (1, 2, 3)]
    for k, (got, start_k) in enumerate(zip(final_weights(output), start_weights)):
        expected = start_k + sum(d[k] for d in deltas) / 3
        np.testing.assert_allclose(got, expected, atol=1e-5)
    history = tagged(output, "RESULT")["history"]["history"]
    assert history["dp_clipping_norm"] == [clip_norm]
    assert history["participants"] == [3]


def test_secure_dp_with_noise_and_adaptive_clipping_reports_epsilon(tmp_path):
    """Noise and adaptive clipping under SecAgg: the clipped-count bit travels inside the
    secure sum, the clipping norm moves, and epsilon is reported every round."""
    rc, output, dump = run_federation(
        tmp_path, clients=3, rounds=2, extra=["--dp-options", json.dumps(
            {"noise_multiplier": 0.3, "adaptive_clipping": True, "initial_clipping_norm": 0.1,
             "clipped_count_stddev": 1.0})])
    assert rc == 0, dump
    history = tagged(output, "RESULT")["history"]["history"]
    epsilons = history["epsilon"]
    assert len(epsilons) == 2 and 0 < epsilons[0] < epsilons[1], epsilons
    norms = history["dp_clipping_norm"]
    assert norms[0] == 0.1 and norms[1] != norms[0], norms  # every change is beyond 0.1: C grows


def test_server_side_dp_clipping_is_refused_under_secure_aggregation():
    from pyfed.privacy import DifferentialPrivacy, SecureAggregation
    from pyfed.strategy import FedAvg

    with pytest.raises(ConfigurationError, match="clipping='client'"):
        SecureAggregation(DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0))
