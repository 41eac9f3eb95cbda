"""Asynchronous federation (FedAsync, FedBuff) end to end: real server and client processes.

The numpy-only softmax roles over loopback (they start in about a second). A "slow" client is
a model whose ``fit`` sleeps (``roles.py --slow``); hostile clients speak the protocol by hand
(``hostile_roles.py evil-client``). Every process runs in a ProcessGroup (ended by its PID,
always reaped) and every wait is bounded. Nothing here asserts on timing: the slow clients only
make the orders of events (who arrives stale, who misses a deadline) overwhelmingly likely.

In async mode ``rounds`` counts global model versions; FIT carries ``round = version + 1``.
"""

from __future__ import annotations

import json
import os
import re
import signal
from statistics import mean

import pytest

import test_security
from conftest import tagged
from procs import ProcessGroup, free_port
from test_faults import client_args, only_run_dir, server_args, wait_exit, wait_for_output
from test_hostile import finish_all, start_evil, tagged_lines
from test_logs import scalars

from pyfed.server.checkpoint import CHECKPOINT_FILE, load_checkpoint
from pyfed.strategy.staleness import staleness_weight

FAST, SLOW = 0.05, 0.4  # seconds each fit sleeps: a slow client is 8x slower
OPTIONS = {"FedBuff": {"buffer_size": 2}, "FedAsync": {}}
TOKEN = test_security.TOKEN
certificate = test_security.certificate  # its module-scoped TLS fixture, found here by pytest


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def start_server(group, port, logdir, strategy="FedBuff", *, options=None, clients=3, rounds=8,
                 name="server", extra=(), **kwargs):
    """``roles.py softmax-server`` with an asynchronous strategy (test_faults' arguments)."""
    options = OPTIONS[strategy] if options is None else options
    return group.role(name, *server_args(port, logdir, clients=clients, rounds=rounds,
                                  strategy_options=options, **kwargs),
               "--strategy", strategy, *extra)


def history_of(result) -> dict:
    return result["history"]["history"]


def staleness_by_client(history) -> dict[str, list[int]]:
    """Each client's updates, as the staleness each arrived with, over the whole run."""
    found: dict[str, list[int]] = {}
    for version in history["updates"]:
        for client, staleness in version:
            found.setdefault(client, []).append(staleness)
    return found


def assert_every_version(result, rounds: int) -> dict:
    """Versions 1..rounds, each recorded once, and the update counts add up: every update in
    a version's record is counted once in ``client_updates``, and none is missing."""
    history = history_of(result)
    assert result["history"]["rounds"] == list(range(1, rounds + 1)), result["history"]["rounds"]
    per_version = history["async_updates_per_version"]
    assert all(count >= 1 for count in per_version), per_version
    assert [len(updates) for updates in history["updates"]] == per_version
    assert [len(s) for s in history["staleness"]] == per_version
    totals = {}
    for updates, counts in zip(history["updates"], history["client_updates"]):
        for client, _ in updates:
            totals[client] = totals.get(client, 0) + 1
        assert counts == totals, (counts, totals)  # counts so far, never reset or doubled
    return history


def assert_clients_hold_the_final_model(group, result, names) -> dict:
    """Each client ended by FINISH with exactly the server's final weights."""
    clients = {name: tagged(group.output(name), "CLIENT") for name in names}
    for name, client in clients.items():
        assert client["weights"] == result["weights"], (name, group.output(name)[-2000:])
    return clients


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output[-4000:]


def training_rounds(output: str) -> list[int]:
    """The FIT rounds (version + 1) a slow client started training from, in order."""
    return [int(r) for r in re.findall(r"^TRAINING round (\d+)$", output, re.MULTILINE)]


# ----------------------------------------------------------------------------------------------
# 1. A deliberately slow client, with FedBuff and with FedAsync (one run each, shared)
# ----------------------------------------------------------------------------------------------

ROUNDS = {"FedBuff": 16, "FedAsync": 30}


@pytest.fixture(scope="module", params=["FedBuff", "FedAsync"])
def slow_client_run(request, tmp_path_factory):
    """Two fast clients and one 8x slower, centralized evaluation every version, and the
    recording callbacks (tests/roles.py --callback-log: a Recorder and one that always
    raises)."""
    strategy = request.param
    base = tmp_path_factory.mktemp(strategy)
    port, logdir, rounds = free_port(), base / "logs", ROUNDS[strategy]
    callback_log = base / "callbacks.jsonl"
    with ProcessGroup(base / "procs") as group:
        start_server(group, port, logdir, strategy, rounds=rounds,
                     extra=("--centralized", "--callback-log", callback_log))
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST))
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST))
        group.role("client_3", *client_args(port, logdir, 3, slow=SLOW))
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        clients = assert_clients_hold_the_final_model(group, result,
                                                      ["client_1", "client_2", "client_3"])
        server = group.output("server")
    events = [json.loads(line) for line in callback_log.read_text().splitlines()]
    return {"strategy": strategy, "rounds": rounds, "result": result, "server": server,
            "clients": clients, "events": events, "run_dir": only_run_dir(logdir)}


def test_a_slow_client_arrives_stale_and_is_weighted_down(slow_client_run):
    run = slow_client_run
    history = assert_every_version(run["result"], run["rounds"])
    final = history["client_updates"][-1]
    # The fast clients set the pace: each contributes more than the slow one.
    assert final["client_1"] > final.get("client_3", 0), final
    assert final["client_2"] > final.get("client_3", 0), final
    staleness = staleness_by_client(history)
    slow = staleness.get("client_3", [])
    assert slow, f"the slow client's update never arrived: {history['updates']}"
    fast = staleness["client_1"] + staleness["client_2"]
    assert mean(slow) > mean(fast), (slow, fast)
    # Each of its updates was stale, so the strategy's staleness function (the default
    # polynomial, 1/sqrt(1 + s)) weighed it down.
    assert all(s >= 1 and staleness_weight(s) < 1 for s in slow), slow
    assert mean(staleness_weight(s) for s in slow) < mean(staleness_weight(s) for s in fast)
    assert history["async_staleness_max"] == [max(s) for s in history["staleness"]]
    assert max(history["async_staleness_max"]) >= max(slow)
    # Stale updates weighted down still let the model learn (chance is 0.10).
    assert run["result"]["test"]["accuracy"] > 0.6, run["result"]["test"]


def test_every_client_ends_with_the_final_model(slow_client_run):
    run = slow_client_run
    for name, client in run["clients"].items():
        assert client["weights"] == run["result"]["weights"], name
        assert client["rounds"] >= 1, (name, client)
    # The slow client trained far fewer jobs than the fast ones, yet holds the same model.
    assert run["clients"]["client_3"]["rounds"] < run["clients"]["client_1"]["rounds"]


def test_one_progress_line_per_version(slow_client_run):
    run = slow_client_run
    rounds = run["rounds"]
    pattern = (r"^version (\d+)/" + str(rounds) + r" · (\d+) updates? \(staleness ([\d,]+)\) · "
               r"test loss [\d.]+ acc [\d.]+ · [\d.]+ s$")
    lines = re.findall(pattern, run["server"], re.MULTILINE)
    history = history_of(run["result"])
    assert [int(v) for v, _, _ in lines] == list(range(1, rounds + 1)), run["server"][-3000:]
    for (_, count, shown), staleness in zip(lines, history["staleness"]):
        assert int(count) == len(staleness)
        assert [int(s) for s in shown.split(",")] == staleness


def test_callbacks_hear_each_update_before_its_version_ends(slow_client_run):
    """on_train_begin; per version: on_fit_result for each of its updates, on_evaluate_end,
    on_round_end; on_train_end. The async driver begins no rounds: no on_round_begin."""
    run = slow_client_run
    events, rounds = run["events"], run["rounds"]
    history = history_of(run["result"])
    assert events[0][0] == "on_train_begin"
    assert events[-1] == ["on_train_end", list(range(1, rounds + 1)), True]
    folded, evaluated, ended = [], None, []
    for event in events[1:-1]:
        hook = event[0]
        if hook == "on_fit_result":
            _, fit_round, client, num_examples, metrics = event
            assert num_examples > 0 and "loss" in metrics, event
            assert 1 <= fit_round <= len(ended) + 1, event  # the version it trained toward
            folded.append(client)
        elif hook == "on_evaluate_end":
            assert event[1:] == [len(ended) + 1, ["test_accuracy", "test_loss"]], event
            evaluated = event[1]
        elif hook == "on_round_end":
            _, version, participants, recorded = event
            updates = history["updates"][version - 1]
            assert sorted(folded) == sorted(client for client, _ in updates), (version, folded)
            assert participants == len(updates) and recorded == version  # History ran first
            assert evaluated == version
            ended.append(version)
            folded = []
        else:
            raise AssertionError(f"unexpected hook in an asynchronous run: {event}")
    assert ended == list(range(1, rounds + 1))
    # The callback that raises in every hook was logged each time; the run went on.
    server = run["server"]
    assert "callback Broken.on_fit_result raised RuntimeError: a user's callback bug" in server
    assert_no_traceback(server)


def test_tensorboard_has_the_async_scalars_at_every_version(slow_client_run):
    run = slow_client_run
    rounds, history = run["rounds"], history_of(run["result"])
    server = scalars(run["run_dir"] / "server")
    for tag, key in [("async/staleness_mean", "async_staleness_mean"),
                     ("async/staleness_max", "async_staleness_max"),
                     ("async/updates_per_version", "async_updates_per_version")]:
        assert [step for step, _ in server[tag]] == list(range(1, rounds + 1)), tag
        assert [value for _, value in server[tag]] == pytest.approx(history[key]), tag
    for client in ("client_1", "client_2", "client_3"):
        series = server[f"async/client_updates/{client}"]
        expected = [(version, counts[client]) for version, counts
                    in enumerate(history["client_updates"], start=1) if client in counts]
        assert [(step, int(value)) for step, value in series] == expected, client
    assert [step for step, _ in server["test/accuracy"]] == list(range(1, rounds + 1))


# ----------------------------------------------------------------------------------------------
# 2. max_staleness
# ----------------------------------------------------------------------------------------------

def test_updates_staler_than_max_staleness_are_refused_and_the_client_keeps_up(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 40
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, "FedAsync", options={"max_staleness": 1},
                     rounds=rounds)
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST))
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST))
        group.role("client_3", *client_args(port, logdir, 3, slow=0.3))
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert_clients_hold_the_final_model(group, result, ["client_1", "client_2", "client_3"])
        server, slow = group.output("server"), group.output("client_3")

    history = assert_every_version(result, rounds)
    assert all(s <= 1 for version in history["staleness"] for s in version), history["staleness"]
    assert "client_3" not in staleness_by_client(history), history["updates"]
    # The slow client is told why, and so is the server's log.
    refusals = re.findall(r"update rejected: update is (\d+) versions stale; max_staleness is 1",
                          slow)
    assert refusals and all(int(s) > 1 for s in refusals), slow[-3000:]
    assert re.search(r"fit result from client_3 rejected: update is \d+ versions stale; "
                     r"max_staleness is 1", server), server[-3000:]
    # Refused, it got the current model again: its next job starts from a newer version.
    trained = training_rounds(slow)
    assert len(trained) >= 2 and trained == sorted(trained) and trained[-1] > trained[0], trained


# ----------------------------------------------------------------------------------------------
# 3. Results for versions that never were, from the future, and sent twice
# ----------------------------------------------------------------------------------------------

def test_bad_versions_are_refused_and_a_duplicate_result_counts_once(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 8
    modes = ["wrong-round", "old-round", "twice"]
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, "FedBuff", clients=2 + len(modes), rounds=rounds)
        wait_for_output(group, "server", r"^READY ", 30)
        # --bad-fits: each FIT the evil connections get is reported (FIT lines); all get the
        # crafted reply.
        start_evil(group, port, modes, timeout=60, bad_fits=1000)
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST))
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST))
        finish_all(group, timeout=90)
        result = tagged(group.output("server"), "RESULT")
        assert_clients_hold_the_final_model(group, result, ["client_1", "client_2"])
        server, evil = group.output("server"), group.output("evil")

    history = assert_every_version(result, rounds)
    counted = set(staleness_by_client(history))
    assert counted <= {"client_1", "client_2", "evil_twice"}, history["updates"]
    rejected = tagged_lines(evil, "REJECTED")
    for mode, offset in [("wrong-round", 7), ("old-round", -1)]:
        mine = [r for r in rejected if r["mode"] == mode]
        claims = [re.search(r"fit result is for round (-?\d+); the current round is (\d+)",
                            r["reason"]) for r in mine]
        # Each refusal names the round claimed and the job's; one in flight as the run ends
        # may instead be refused as too late.
        assert mine and all(c or "closed" in r["reason"] for c, r in zip(claims, mine)), mine
        assert any(claims), mine
        for claim in filter(None, claims):
            assert int(claim.group(1)) == int(claim.group(2)) + offset, claim.group(0)
        assert all(r["code"] == "update_rejected" and not r["fatal"] for r in mine), mine
        fits = [f for f in tagged_lines(evil, "FIT") if f["mode"] == mode]
        assert len(fits) >= len(mine) >= 2, (fits, mine)  # refused, it got the model again
        assert [f["mode"] for f in tagged_lines(evil, "FINISHED")].count(mode) == 1, evil[-3000:]
    # The duplicate: its first copy counted once; the second, unasked for, ended the session.
    assert history["client_updates"][-1].get("evil_twice") == 1, history["client_updates"][-1]
    assert len([f for f in tagged_lines(evil, "FIT") if f["mode"] == "twice"]) == 1, evil
    assert [c["mode"] for c in tagged_lines(evil, "CLOSED")] == ["twice"], evil[-3000:]
    assert "connection evil_twice" in server and "received FIT_RESULT from the client in state " \
        "READY" in server, server[-3000:]
    assert_no_traceback(server)


# ----------------------------------------------------------------------------------------------
# 4-5. kill -9: of a client mid-job, of the server (then a resume)
# ----------------------------------------------------------------------------------------------

def last_version(output: str, rounds: int) -> int:
    found = re.findall(rf"^version (\d+)/{rounds} · ", output, re.MULTILINE)
    return int(found[-1]) if found else 0


def test_a_client_killed_mid_job_the_versions_keep_advancing(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 40
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, "FedBuff", rounds=rounds)
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST))
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST))
        victim = group.role("client_3", *client_args(port, logdir, 3, slow=0.6))
        # Its second job has begun (so its first result was sent): kill it mid-fit.
        wait_for_output(group, "client_3", r"^TRAINING round \d+$[\s\S]*^TRAINING round \d+$",
                        60)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        at_kill = last_version(group.output("server"), rounds)
        for name in ("server", "client_1", "client_2"):
            assert wait_exit(group, name, 60) == 0, group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert_clients_hold_the_final_model(group, result, ["client_1", "client_2"])
        server = group.output("server")

    history = assert_every_version(result, rounds)
    assert at_kill < rounds, "the run had ended before the kill"
    # Its first update counted; the job it was killed in never did; the versions went on.
    assert history["client_updates"][-1].get("client_3") == 1, history["client_updates"][-1]
    assert re.search(r"WARNING .*client_3.* disconnected", server), server[-3000:]
    assert_no_traceback(server)


def test_resume_after_the_server_is_killed_continues_from_the_checkpointed_version(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 10
    retry = {"slow": 0.3, "max_retries": 8, "retry_interval": 0.5}
    with ProcessGroup(tmp_path / "procs") as group:
        first = start_server(group, port, logdir, "FedBuff", rounds=rounds)
        for i in (1, 2, 3):
            group.role(f"client_{i}", *client_args(port, logdir, i, **retry))
        wait_for_output(group, "server", rf"^version 3/{rounds} · ", 60)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        run_dir = only_run_dir(logdir)
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
        saved = checkpoint.server_round
        assert 3 <= saved < rounds, saved
        assert checkpoint.history["rounds"] == list(range(1, saved + 1))

        start_server(group, port, logdir, "FedBuff", rounds=rounds, name="server_resumed",
                     resume=True)
        codes = {name: wait_exit(group, name, 90)
                 for name in ("server_resumed", "client_1", "client_2", "client_3")}
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server_resumed"), "RESULT")
        clients = assert_clients_hold_the_final_model(group, result,
                                                      ["client_1", "client_2", "client_3"])
        server = group.output("server_resumed")

    assert "resuming run" in server, server[-3000:]
    # The resumed run's first version is the one after the checkpoint's; none recorded twice.
    versions = [int(v) for v in re.findall(rf"^version (\d+)/{rounds} · ", server, re.MULTILINE)]
    assert versions == list(range(saved + 1, rounds + 1)), versions
    history = assert_every_version(result, rounds)  # contiguous; counts continue across it
    assert history["updates"][:saved] == checkpoint.history["history"]["updates"]
    assert os.path.samefile(result["run_dir"], run_dir)
    for name, client in clients.items():
        assert client["reconnections"] >= 1, (name, client)
    assert_no_traceback(server)


# ----------------------------------------------------------------------------------------------
# 6. What the synchronous path has: late joiners, deadlines, auth and compression
# ----------------------------------------------------------------------------------------------

def test_a_late_joiner_takes_part_and_evaluation_runs_every_few_versions(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 16
    go = tmp_path / "join now"
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, "FedBuff", clients=2, rounds=rounds,
                     options={"buffer_size": 2, "evaluate_every": 5}, extra=("--centralized",))
        group.role("client_1", *client_args(port, logdir, 1, slow=0.25))
        group.role("client_2", *client_args(port, logdir, 2, slow=0.25))
        # Started now (its imports take a while on a busy machine), it joins once told to.
        group.role("client_3", *client_args(port, logdir, 3), "--wait-for-file", go)
        wait_for_output(group, "server", rf"^version 1/{rounds} · ", 60)
        go.touch()
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        late = assert_clients_hold_the_final_model(group, result, ["client_3"])["client_3"]

    history = assert_every_version(result, rounds)
    assert {c for c, _ in history["updates"][0]} <= {"client_1", "client_2"}
    assert history["client_updates"][-1].get("client_3", 0) >= 1, history["client_updates"]
    assert late["rounds"] >= 1
    # evaluate_every=5: versions 5, 10, 15 and the last one.
    evaluated = [v for v, loss in enumerate(history["test_loss"], start=1) if loss is not None]
    assert evaluated == [5, 10, 15, rounds], history["test_loss"]


def test_a_client_missing_its_job_deadline_is_not_waited_for(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 30
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, "FedBuff", rounds=rounds, round_timeout=1)
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST))
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST))
        group.role("client_3", *client_args(port, logdir, 3, slow=2.0))
        codes = group.wait_all(timeout=120)
        assert all(code == 0 for code in codes.values()), group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert_clients_hold_the_final_model(group, result, ["client_1", "client_2", "client_3"])
        server, slow = group.output("server"), group.output("client_3")

    history = assert_every_version(result, rounds)
    assert "client_3" not in staleness_by_client(history), history["updates"]
    # Its answer, 1 s past the job's deadline, is read and refused; it keeps its connection.
    assert re.search(r"update rejected: arrived after round \d+ closed; not counted", slow), slow
    assert re.search(r"fit result from client_3 dropped: arrived after round \d+ closed", server)
    assert_no_traceback(server)


def test_a_silent_client_misses_its_deadline_and_the_others_finish(tmp_path):
    port, logdir, rounds = free_port(), tmp_path / "logs", 16
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, "FedBuff", rounds=rounds, round_timeout=1)
        wait_for_output(group, "server", r"^READY ", 30)
        # It never answers, and hangs up after --timeout: until then the server, done, waits
        # for it to take FINISH (the clients that answered have theirs at once).
        start_evil(group, port, ["silent"], timeout=6)
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST))
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST))
        finish_all(group, timeout=90)
        result = tagged(group.output("server"), "RESULT")
        assert_clients_hold_the_final_model(group, result, ["client_1", "client_2"])
        evil = group.output("evil")

    history = assert_every_version(result, rounds)
    assert set(staleness_by_client(history)) == {"client_1", "client_2"}, history["updates"]
    # Its job's deadline passed unanswered; it was given no other job while it owed that one.
    assert len(tagged_lines(evil, "GOT_FIT")) == 1, evil


@pytest.mark.parametrize("codec,strategy,tls", [("int8", "FedBuff", False),
                                                ("int8", "FedAsync", True),
                                                ("fp16", "FedBuff", False)])
def test_token_tls_and_compression_in_async_mode(tmp_path, request, codec, strategy, tls):
    port, logdir, rounds = free_port(), tmp_path / "logs", ROUNDS[strategy]
    server_tls = client_tls = ()
    if tls:
        cert, key = request.getfixturevalue("certificate")
        server_tls, client_tls = ("--ssl-certfile", cert, "--ssl-keyfile", key), ("--ssl-cafile", cert)
    token = ("--token", TOKEN)
    with ProcessGroup(tmp_path / "procs") as group:
        start_server(group, port, logdir, strategy, rounds=rounds,
                     extra=(*token, "--compression", codec, *server_tls))
        wait_for_output(group, "server", r"^READY ", 30)
        group.role("intruder", *client_args(port, logdir, 3, max_retries=0), "--name", "mallory",
                   "--token", "not the token at all", *client_tls)
        assert wait_exit(group, "intruder", 60) != 0
        group.role("client_1", *client_args(port, logdir, 1, slow=FAST), *token, *client_tls)
        group.role("client_2", *client_args(port, logdir, 2, slow=FAST), *token, *client_tls)
        group.role("client_3", *client_args(port, logdir, 3, slow=0.3), *token, *client_tls)
        codes = group.wait_all(timeout=120)
        assert codes["server"] == 0 and all(codes[f"client_{i}"] == 0 for i in (1, 2, 3)), \
            group.dump()
        result = tagged(group.output("server"), "RESULT")
        assert_clients_hold_the_final_model(group, result, ["client_1", "client_2", "client_3"])
        server, intruder = group.output("server"), group.output("intruder")

    assert "AuthenticationError" in intruder, intruder[-2000:]
    assert "authentication failed from 127.0.0.1:" in server, server[-3000:]
    history = assert_every_version(result, rounds)
    assert "mallory" not in history["client_updates"][-1]
    # The slow client's stale, compressed updates decode against the version it trained from.
    assert history["client_updates"][-1].get("client_3", 0) >= 1, history["client_updates"]
    assert result["test"]["accuracy"] > 0.6, result["test"]
    # No update failed to decode: the only refusals are of results in flight as the run ended.
    reasons = set(re.findall(r" rejected: (.*)$", server, re.MULTILINE))
    assert reasons <= {f"training reached its last version ({rounds})"}, reasons
    assert_no_traceback(server)
