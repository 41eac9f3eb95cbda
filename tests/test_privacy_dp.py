"""DifferentialPrivacy end to end: a real FL_Server and FL_Client processes on loopback
(tests/dp_roles.py, numpy only), observed from outside (history, TensorBoard, the global
model's moves) and with dp-accounting computing the expected epsilon itself."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tagged
from procs import ProcessGroup, free_port

DP_ROLES = Path(__file__).with_name("dp_roles.py")
DELTA = 1e-5


def dp_accounting_epsilon(q: float, z: float, rounds: int, delta: float = DELTA) -> float:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(z)), rounds)
    return accountant.get_epsilon(delta)


def run_dp(tmp_path: Path, kinds: list[str], dp: dict, *, inner: dict | None = None,
           rounds: int = 3, model: str = "softmax", shapes: str = "3x4,4",
           run_name: str = "dp", resume: bool = False, label: str = "run",
           failing: tuple[int, ...] = ()) -> dict:
    """One run; ``kinds[i]`` is client i+1's role (softmax, hostile, echo, quitter); the
    clients numbered in ``failing`` are expected to exit with an error."""
    port = free_port()
    logdir = tmp_path / "logs"
    moves = tmp_path / f"{label}-moves.jsonl"
    common = ["--port", port, "--clients", len(kinds), "--logdir", logdir, "--shapes", shapes]
    server = [sys.executable, DP_ROLES, "server", *common, "--rounds", rounds, "--model", model,
              "--dp", json.dumps({"target_delta": DELTA, **dp}),
              "--inner-options", json.dumps(inner or {}), "--moves", moves,
              "--run-name", run_name] + (["--resume"] if resume else [])
    with ProcessGroup(tmp_path / label) as group:
        group.start("server", server)
        for index, kind in enumerate(kinds, start=1):
            group.start(f"client_{index}", [sys.executable, DP_ROLES, "client", *common,
                                            "--index", index, "--kind", kind])
        codes = group.wait_all(timeout=180)
        assert all((code != 0) == (name in {f"client_{i}" for i in failing})
                   for name, code in codes.items()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        result["output"] = group.output("server")
        result["clients"] = [tagged(group.output(f"client_{i}"), "CLIENT")
                             for i in range(1, len(kinds) + 1) if i not in failing]
    result["moves"] = ([json.loads(line) for line in moves.read_text().splitlines()]
                       if moves.exists() else [])
    return result


def test_a_hostile_update_is_clipped_to_c_and_no_round_moves_the_model_more_than_c(tmp_path):
    clip = 0.5
    # Alone, the hostile client's clipped contribution IS the round's move (q = 1, N = 1, no
    # noise): exactly C, from an update of norm 1000 * sqrt(650).
    alone = run_dp(tmp_path, ["hostile"], {"noise_multiplier": 0.0, "clipping_norm": clip},
                   label="alone")
    assert all(n > 1000 * math.sqrt(650) * 0.99 for n in alone["received"]), alone["received"]
    assert [m["norm"] for m in alone["moves"]] == pytest.approx([clip] * 3, rel=1e-4)
    # Among honest clients: every round moves the global model by at most C.
    mixed = run_dp(tmp_path, ["softmax", "hostile", "softmax"],
                   {"noise_multiplier": 0.0, "clipping_norm": clip}, rounds=4, label="mixed")
    assert len(mixed["moves"]) == 4 and all(m["participants"] == 3 for m in mixed["moves"])
    assert all(m["norm"] <= clip * (1 + 1e-4) for m in mixed["moves"]), mixed["moves"]
    assert max(mixed["received"]) > 1000 and min(mixed["received"]) < 1000  # who was hostile
    assert mixed["history"]["history"]["epsilon"] == [math.inf] * 4  # no noise: no guarantee


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory):
    """Echo clients return the global model unchanged, so each round's move is the noise alone:
    4 clients, q = 0.5, z = 1, C = 2 -> std z C / (q N) = 1 on 20,000 coordinates."""
    tmp_path = tmp_path_factory.mktemp("echo")
    return run_dp(tmp_path, ["echo"] * 4, {"noise_multiplier": 1.0, "clipping_norm": 2.0},
                  inner={"fraction_fit": 0.5}, rounds=4, model="numpy", shapes="200x100")


def test_the_noise_std_is_z_c_over_q_n_within_sampling_error(echo_run):
    from scipy.stats import chi2

    expected_std = 1.0 * 2.0 / (0.5 * 4)
    assert len(echo_run["moves"]) == 4
    for move in echo_run["moves"]:
        n = move["size"]
        assert n == 20_000
        # (n - 1) s^2 / sigma^2 ~ chi2(n - 1): a two-sided 1e-6 band (about +-3.5% on the std),
        # whatever the number of clients the Poisson sample happened to hold (the denominator
        # is q N, fixed).
        statistic = (n - 1) * move["std"] ** 2 / expected_std ** 2
        assert chi2.ppf(5e-7, n - 1) < statistic < chi2.ppf(1 - 5e-7, n - 1), move
        assert abs(move["mean"]) < 5.5 * expected_std / math.sqrt(n), move
    assert echo_run["history"]["history"]["dp_noise_std"] == [expected_std] * 4


def test_reported_epsilon_equals_dp_accountings_own_figure(echo_run):
    history = echo_run["history"]["history"]
    expected = [dp_accounting_epsilon(0.5, 1.0, r) for r in (1, 2, 3, 4)]
    assert history["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert echo_run["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    # the progress line and TensorBoard have it too
    assert f"ε {expected[-1]:.2f}" in echo_run["output"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(echo_run["run_dir"]) / "server"))
    events.Reload()
    values = [e.value for e in events.Scalars("privacy/epsilon")]
    assert values == pytest.approx(expected, rel=1e-6)
    assert [e.value for e in events.Scalars("privacy/clipping_norm")] == [2.0] * 4


def test_max_epsilon_stops_cleanly_before_the_round_that_would_exceed_it(tmp_path):
    q, z = 0.5, 1.0
    budget = (dp_accounting_epsilon(q, z, 3) + dp_accounting_epsilon(q, z, 4)) / 2
    result = run_dp(tmp_path, ["echo"] * 2, {"noise_multiplier": z, "clipping_norm": 1.0,
                                            "max_epsilon": budget},
                    inner={"fraction_fit": q}, rounds=10, model="numpy")
    assert result["history"]["rounds"] == [1, 2, 3]
    assert result["epsilon"] <= budget
    assert "stopping before round 4: privacy budget reached" in result["output"]
    assert "epsilon" in result["finish_reason"] and f"max_epsilon={budget:g}" in result["finish_reason"]
    for client in result["clients"]:  # FINISH told every client why, with the final model
        assert client["final_reason"].startswith("privacy budget reached"), client
    assert Path(result["final_model"]).is_file()


def test_a_resumed_run_keeps_counting_epsilon(tmp_path):
    dp = {"noise_multiplier": 1.2, "clipping_norm": 1.0}
    first = run_dp(tmp_path, ["echo"] * 2, dp, inner={"fraction_fit": 0.5}, rounds=2,
                   model="numpy", label="first")
    assert first["history"]["rounds"] == [1, 2]
    second = run_dp(tmp_path, ["echo"] * 2, dp, inner={"fraction_fit": 0.5}, rounds=4,
                    model="numpy", resume=True, label="second")
    assert second["history"]["rounds"] == [1, 2, 3, 4]
    assert "resuming run dp after round 2" in second["output"]
    expected = [dp_accounting_epsilon(0.5, 1.2, r) for r in (1, 2, 3, 4)]
    assert second["history"]["history"]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert second["epsilon"] == pytest.approx(expected[-1], rel=1e-9)


def test_poisson_sampling_runs_an_empty_round_and_counts_it(tmp_path):
    # Seed 4 samples nobody in at least one of these rounds (and somebody in others): 3
    # clients, q = 0.3, each joining independently.
    result = run_dp(tmp_path, ["echo"] * 3, {"noise_multiplier": 1.0, "clipping_norm": 1.0},
                    inner={"fraction_fit": 0.3, "seed": 4}, rounds=8, model="numpy")
    history = result["history"]["history"]
    participants = history["participants"]
    assert len(participants) == 8 and 0 in participants and max(participants) > 0, participants
    assert sum(c["rounds"] for c in result["clients"]) == sum(participants)
    # every round was applied and counted, the empty ones too (their noise moved the model)
    assert history["epsilon"] == pytest.approx(
        [dp_accounting_epsilon(0.3, 1.0, r) for r in range(1, 9)], rel=1e-9)
    empty = [m for m in result["moves"] if m["participants"] == 0]
    assert empty and all(m["norm"] > 0 for m in empty)


def test_adaptive_clipping_moves_c_up_toward_the_update_norms(tmp_path):
    result = run_dp(tmp_path, ["softmax"] * 3,
                    {"noise_multiplier": 0.0, "adaptive_clipping": True,
                     "initial_clipping_norm": 1e-3, "clip_norm_lr": 1.0, "target_quantile": 0.5},
                    rounds=5)
    norms = result["history"]["history"]["dp_clipping_norm"]
    assert norms[0] == pytest.approx(1e-3)
    # every update is far above 1e-3, so almost none is unclipped: C grows about e^0.5 a round
    assert all(b > a * 1.3 for a, b in zip(norms, norms[1:])), norms
    assert result["clipping_norm"] > norms[-1]
    assert min(result["received"]) > result["clipping_norm"]  # still below the median: rising


def test_client_side_clipping_end_to_end(tmp_path):
    clip = 0.05
    result = run_dp(tmp_path, ["softmax", "hostile", "softmax"],
                    {"noise_multiplier": 0.0, "clipping_norm": clip, "clipping": "client"},
                    rounds=3)
    # What arrived was clipped by the clients already (the hostile one's FL_Client too),
    # up to the float32 rounding of global + clipped delta.
    assert len(result["received"]) == 9
    assert all(n <= clip * (1 + 1e-4) for n in result["received"]), result["received"]
    assert max(result["received"]) > clip * 0.99  # and they were clipped, not tiny
    assert all(m["norm"] <= clip * (1 + 1e-4) for m in result["moves"]), result["moves"]
    assert all(c["rounds"] == 3 for c in result["clients"])
    assert np.isfinite(result["history"]["history"]["test_accuracy"][-1])


def test_a_round_short_of_a_sampled_client_is_resampled_and_counted_once(tmp_path):
    # q = 1: round 2 samples all three, and client_3 dies while training. The round fails, is
    # run again with a new sample of the two left, and only applied rounds reach the ledger.
    result = run_dp(tmp_path, ["echo", "echo", "quitter"],
                    {"noise_multiplier": 1.0, "clipping_norm": 1.0}, rounds=3, model="numpy",
                    failing=(3,))
    history = result["history"]["history"]
    assert result["history"]["rounds"] == [1, 2, 3]
    assert history["participants"] == [3, 2, 2]
    assert "running round 2 again with the same global model" in result["output"]
    assert history["epsilon"] == pytest.approx(
        [dp_accounting_epsilon(1.0, 1.0, r) for r in (1, 2, 3)], rel=1e-9)
    # N fell from 3 to 2 between the attempts: the noise follows the N of the applied sample
    assert history["dp_noise_std"] == pytest.approx([1 / 3, 1 / 2, 1 / 2])
