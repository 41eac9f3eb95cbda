"""Numbers, names and sizes from the network (pyfed.wire.limits), against live servers and clients.

Trust boundaries 1 and 4 (DESIGN.md): every number a peer sends is checked as a type and a range
where its message is decoded, every string is escaped before it reaches a log or the terminal,
and the metric names a peer may invent are capped. A peer whose message breaks a rule has that
message refused, is told why, and the round goes on with everybody else.

The real-process tests run ``hostile_roles.py`` servers and clients on 127.0.0.1 (numpy model,
so each starts in a fraction of a second); the unit tests at the end need no sockets.
"""

from __future__ import annotations

import math
import re
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hostile_roles import EVAL_MODES, FIELD_MODES, FORGED, read_frame
from procs import ProcessGroup
from test_hostile import (assert_no_traceback, finish_all, frame, send_and_drain, server_result,
                          start_evil, start_honest, start_server, tagged_lines)

from pyfed.wire import auth, limits, protocol
from pyfed.errors import InvalidValue, ProtocolError
from pyfed.wire.messages import (Error, EvaluateResult, Finish, Fit, FitResult, Hello, Welcome)

HOSTILE = Path(__file__).with_name("hostile_roles.py")
FORGED_LINE = re.compile(r"^round 9/9", re.MULTILINE)
ESCAPED = r"x\nround 9/9"  # how FORGED must appear once escaped: one line, visibly


def assert_no_forged_line(output: str, who: str) -> None:
    forged = [line for line in output.splitlines() if FORGED_LINE.match(line)]
    assert not forged, f"a peer's string wrote its own line into {who}'s output: {forged}"


# ---------------------------------------------------------------------------------------------
# A1: out-of-range numbers and wrong shapes, refused with a reason; the server serves on
# ---------------------------------------------------------------------------------------------

# mode -> what the reason must name (the field, and where a cap is involved, the cap and value).
REASONS = {
    "metric-overflow": [r"metrics", r"accuracy", r"1(\.0+)?e\+400"],
    "metric-nan": [r"metrics", r"loss", r"nan"],
    "metric-inf": [r"metrics", r"-inf"],
    "metric-huge": [r"metrics", r"1e\+300", r"1e\+18"],
    "metric-string": [r"metrics", r"str"],
    "metric-nested": [r"metrics", r"dict"],
    "metric-bool": [r"metrics", r"bool"],
    "examples-overflow": [r"num_examples", r"1(\.0+)?e\+400"],
    "examples-bool": [r"num_examples", r"bool"],
    "examples-float": [r"num_examples", r"float"],
    "round-huge-negative": [r"round", r"-1(\.0+)?e\+30"],
    "epoch-overflow": [r"first_epoch", r"1(\.0+)?e\+400"],
    "history-nan": [r"history", r"loss", r"nan"],
    "history-not-a-list": [r"history", r"list"],
    "history-too-long": [r"history", r"10001", r"10000"],
    "many-metric-keys": [r"metrics", r"50000", r"\b64\b"],
    "long-metric-name": [r"metric name", r"10000", r"\b128\b"],
    "forged-metric-name": [r"metric name", re.escape(ESCAPED)],
    "eval-examples-overflow": [r"num_examples", r"1(\.0+)?e\+400"],
    "eval-loss-overflow": [r"loss", r"1(\.0+)?e\+400"],
    "eval-loss-nan": [r"loss", r"nan"],
    "eval-metric-overflow": [r"metrics", r"1(\.0+)?e\+400"],
}


def test_out_of_range_values_are_refused_with_a_reason_and_honest_clients_finish(tmp_path):
    """One connection per crafted message (metrics of 10**400, NaN and Infinity literals,
    huge negative ints, a bool for an int, 50,000 metric names...): each is refused, every
    round, with a non-fatal ERROR that names the field and the value; the server exits 0."""
    rounds = 2
    modes = sorted(REASONS)
    assert set(modes) == set(FIELD_MODES) | set(EVAL_MODES)
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2 + len(modes), rounds=rounds)
        # In the handshake too: a HELLO with a number out of range is answered, then closed.
        hello = send_and_drain(port, frame(Hello(client_name="h", protocol_version=10**400)),
                               timeout=4)
        answer = protocol.decode(hello.data)
        assert hello.closed and answer.code == "invalid_value", answer
        assert re.search(r"HELLO field 'protocol_version' .*1\.000e\+400", answer.reason), answer
        start_evil(group, port, modes, timeout=60)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=90)
        evil = group.output("evil")
        rejected = tagged_lines(evil, "REJECTED")
        problems = []
        for mode, patterns in REASONS.items():
            mine = [r for r in rejected if r["mode"] == mode]
            if len(mine) != rounds:
                problems.append(f"{mode}: {len(mine)} refusals for {rounds} rounds")
                continue
            for r in mine:
                if r["fatal"] or r["code"] != "update_rejected":
                    problems.append(f"{mode}: code={r['code']!r} fatal={r['fatal']}")
                missing = [p for p in patterns if not re.search(p, r["reason"], re.IGNORECASE)]
                if missing:
                    problems.append(f"{mode}: reason {r['reason'][:300]!r} lacks {missing}")
        finished = {r["mode"] for r in tagged_lines(evil, "FINISHED")}
        if set(modes) - finished:
            problems.append(f"no FINISH for {sorted(set(modes) - finished)}")
        assert not problems, "\n".join(problems) + "\n" + evil[-3000:]

        history = server_result(group)
        honest = ["honest_1", "honest_2"]
        trained = sorted(honest + [f"evil_{m}" for m in EVAL_MODES])  # eval-* trained honestly
        assert history["history"]["clients"] == [trained] * rounds
        # No evaluation result was valid, so none was aggregated (and nothing crashed).
        assert not any(key.startswith("eval_") for key in history["history"]), history
        log = group.output("server")
        assert_no_forged_line(log, "the server")
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# A8: strings from the network never forge a log or progress line
# ---------------------------------------------------------------------------------------------

FORGED_SPEC = [["kernel", [63, 10], "<f4", FORGED], ["bias", [10], "<f4", "bias"]]


def test_forged_reasons_paths_and_metric_names_stay_on_one_line_in_the_server_log(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=4, rounds=2)
        # Before any handshake: an ERROR, and a HELLO whose (mismatching) spec names a path.
        before_hello = send_and_drain(port, frame(Error(reason=FORGED)), timeout=4)
        mismatch = send_and_drain(port, frame(Hello(client_name="spec_forger", spec_hash="0" * 64,
                                                    spec=FORGED_SPEC)), timeout=4)
        assert before_hello.closed and mismatch.closed
        refusal = protocol.decode(mismatch.data)
        assert isinstance(refusal, Error) and refusal.code == "model_mismatch", refusal
        assert "\n" not in refusal.reason and ESCAPED in refusal.reason, refusal.reason
        # During training: a non-fatal ERROR from a client, and a metric name.
        start_evil(group, port, ["forged-error", "forged-metric-name"], timeout=40)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=45)
        log = group.output("server")
        assert_no_forged_line(log, "the server")
        # The strings were logged, escaped: one line each, the newline visible as \n.
        assert log.count(ESCAPED) >= 4, log[-4000:]
        assert re.search(r"model mismatch.*" + re.escape(ESCAPED), log), log[-4000:]
        assert re.search(r"evil_forged-error did not contribute: client reported: "
                         + re.escape(ESCAPED), log), log[-4000:]
        rejected = tagged_lines(group.output("evil"), "REJECTED")
        assert [r["mode"] for r in rejected] == ["forged-metric-name"] * 2, rejected
        assert_no_traceback(group)


def test_a_forged_error_reason_before_authentication_stays_on_one_line(tmp_path):
    token = "a-test-token-of-32-characters-xx"
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=1, rounds=1, token=token)
        # HELLO with a nonce earns a CHALLENGE; the answer is an ERROR instead of AUTH.
        hello = Hello(client_name="forger", nonce=auth.new_nonce())
        outcome = send_and_drain(port, frame(hello) + frame(Error(reason=FORGED)), timeout=4)
        assert outcome.closed
        group.start("honest_1", [sys.executable, HOSTILE, "honest-client", "--port", port,
                                 "--index", 1, "--logdir", tmp_path / "logs", "--token", token])
        finish_all(group, timeout=30)
        log = group.output("server")
        assert_no_forged_line(log, "the server")
        assert ESCAPED in log, log[-3000:]
        assert_no_traceback(group)


def _forging_server(listener: socket.socket, seen: dict) -> None:
    """A hostile server: welcomes one client, asks it to train, then answers with a
    non-fatal ERROR and a FINISH whose reasons try to write log lines on the client."""
    from pyfed.models import SoftmaxRegression
    from pyfed.wire.spec import spec_hash, spec_to_json

    model = SoftmaxRegression(64, 10)
    spec = model.spec()
    deadline = time.monotonic() + 30
    listener.settimeout(30)
    conn, _ = listener.accept()
    try:
        hello = read_frame(conn, deadline)
        conn.sendall(frame(Welcome(client_id=hello.client_name, rounds=1, run_name="forged",
                                   run_id="x", model=model.describe(), spec_hash=spec_hash(spec),
                                   config={"spec": spec_to_json(spec)})))
        conn.sendall(frame(Fit(round=1, weights=tuple(model.get_weights()))))
        seen["reply"] = read_frame(conn, deadline)
        conn.sendall(frame(Error(reason=FORGED, code="update_rejected", fatal=False)))
        conn.sendall(frame(Finish(weights=tuple(model.get_weights()), reason=FORGED)))
        seen["closed"] = read_frame(conn, deadline) is None
    finally:
        conn.close()


def test_a_servers_forged_reasons_stay_on_one_line_in_the_clients_log(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {}
    server = threading.Thread(target=_forging_server, args=(listener, seen), daemon=True)
    server.start()
    try:
        with ProcessGroup(tmp_path / "procs") as group:
            port = listener.getsockname()[1]
            group.start("honest_1", [sys.executable, HOSTILE, "honest-client", "--port", port,
                                     "--index", 1, "--logdir", tmp_path / "logs"])
            assert group.wait("honest_1", 40) == 0, group.dump()
            output = group.output("honest_1")
        server.join(timeout=10)
    finally:
        listener.close()
    assert isinstance(seen.get("reply"), FitResult), seen
    assert_no_forged_line(output, "the client")
    assert output.count(ESCAPED) >= 2, output[-3000:]  # the ERROR's reason and FINISH's


# ---------------------------------------------------------------------------------------------
# A9: metric names are capped per message, per round and per run
# ---------------------------------------------------------------------------------------------


def test_metric_names_are_capped_and_the_checkpoint_stays_small(tmp_path):
    """One client sends 50,000 metric names a round (refused, saying which cap), another 64
    valid but never-seen-before names every round: the aggregated metrics and the history
    (hence the checkpoint) stay bounded, and the honest clients' metrics are kept."""
    from pyfed.server.checkpoint import load_checkpoint

    rounds = 12
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=4, rounds=rounds)
        start_evil(group, port, ["many-metric-keys", "fresh-metric-keys"], timeout=60)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=90)
        rejected = tagged_lines(group.output("evil"), "REJECTED")
        assert len(rejected) == rounds and {r["mode"] for r in rejected} == {"many-metric-keys"}
        assert all(re.search(r"50000 .*at most 64", r["reason"]) for r in rejected), rejected[0]
        history = server_result(group)
        keys = history["history"]
        assert len(keys) <= limits.MAX_HISTORY_KEYS, len(keys)
        for name in ("fit_loss", "fit_accuracy"):  # the honest clients' metrics are all there
            assert name in keys and all(v is not None for v in keys[name]), name
        for r in range(rounds):
            fit_keys = [k for k in keys if k.startswith("fit_") and keys[k][r] is not None]
            assert len(fit_keys) <= limits.MAX_METRICS, (r, len(fit_keys))
        [path] = list((tmp_path / "logs").glob("*/checkpoint.npz"))
        checkpoint = load_checkpoint(path)
        assert len(checkpoint.history["history"]) <= limits.MAX_HISTORY_KEYS
        # 512 series of 12 rounds in JSON: well under 1 MB (it was 45.6 MB by round 12).
        assert path.stat().st_size < 1 << 20, path.stat().st_size
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# A11: max_update_norm against a real poisoned update
# ---------------------------------------------------------------------------------------------


def _final_weights(tmp_path) -> list[np.ndarray]:
    [path] = list((tmp_path / "logs").glob("*/final_weights.npz"))
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


@pytest.mark.parametrize("action", ["reject", "clip"])
def test_max_update_norm_refuses_or_clips_a_huge_delta(tmp_path, action):
    from pyfed.models import SoftmaxRegression

    bound = 1.0
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=3, rounds=1, max_update_norm=bound,
                            update_norm_action=action)
        start_evil(group, port, ["huge-delta"], timeout=30)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=40)
        rejected = tagged_lines(group.output("evil"), "REJECTED")
        history = server_result(group)
        initial = SoftmaxRegression(64, 10).get_weights()
        moved = math.sqrt(sum(float(np.sum((f.astype(np.float64) - i) ** 2))
                              for f, i in zip(_final_weights(tmp_path), initial)))
        if action == "reject":
            assert len(rejected) == 1 and not rejected[0]["fatal"], rejected
            reason = rejected[0]["reason"]
            # ||delta|| = 1000 * sqrt(650) = 25495.1: the reason names the norm and the bound.
            assert re.search(r"norm 2549\d", reason) and "max_update_norm 1" in reason, reason
            assert history["history"]["clients"] == [["honest_1", "honest_2"]]
        else:
            assert not rejected, rejected
            assert history["history"]["clients"] == [["evil_huge-delta", "honest_1", "honest_2"]]
            # Every update was clipped to the bound, so their weighted mean moved at most by it
            # (unclipped, the evil client's fifth of the weight alone would move it ~5,100).
            assert moved <= bound * (1 + 1e-5), moved
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# Unit tests: the decoder's rules (no sockets)
# ---------------------------------------------------------------------------------------------


def _refusal(message) -> str:
    with pytest.raises(InvalidValue) as info:
        protocol.decode(protocol.encode_bytes(message))
    return str(info.value)


def test_every_number_from_the_network_is_range_checked_where_it_is_decoded():
    ok = FitResult(round=3, num_examples=10, metrics={"loss": 0.5, "steps": 7},
                   history={"loss": [0.7, 0.5]}, first_epoch=4)
    assert protocol.decode(protocol.encode_bytes(ok)) == ok
    cases = [
        (FitResult(round=1, metrics={"accuracy": 10**400}), ["metrics", "accuracy", "e+400"]),
        (FitResult(round=1, metrics={"loss": float("nan")}), ["metrics", "nan"]),
        (FitResult(round=1, metrics={"loss": float("inf")}), ["metrics", "inf"]),
        (FitResult(round=1, num_examples=10**400), ["num_examples", "e+400"]),
        (FitResult(round=1, num_examples=-1), ["num_examples", "-1"]),
        (FitResult(round=1, num_examples=True), ["num_examples", "bool"]),
        (FitResult(round=-10**30), ["round", "e+30"]),
        (FitResult(round=1, first_epoch=-1), ["first_epoch", "-1"]),
        (FitResult(round=1, history={"loss": [1, None]}), ["history", "NoneType"]),
        (FitResult(round=1, history={"loss": [0.1] * 10_001}), ["history", "10001", "10000"]),
        (FitResult(round=1, history={f"h{i}": [] for i in range(65)}), ["history", "65", "64"]),
        (FitResult(round=1, metrics={f"m{i}": 1 for i in range(65)}), ["metrics", "65", "64"]),
        (FitResult(round=1, metrics={"": 1}), ["metric name", "empty"]),
        (FitResult(round=1, metrics={"a" * 129: 1}), ["metric name", "129", "128"]),
        (FitResult(round=1, metrics={"a\nb": 1}), ["metric name", r"a\nb"]),
        (EvaluateResult(round=1, num_examples=10**400, loss=0.1), ["num_examples", "e+400"]),
        (EvaluateResult(round=1, num_examples=1, loss=10**400), ["loss", "e+400"]),
        (EvaluateResult(round=1, num_examples=1, loss=-1e19), ["loss", "-1e+19", "1e+18"]),
        (Fit(round=2**40), ["round", str(2**40)]),
        (Welcome(client_id="c", rounds=-1, run_name="r", run_id="i"), ["rounds", "-1"]),
        (Hello(client_name="c", protocol_version=10**400), ["protocol_version", "e+400"]),
        (Hello(client_name="c", spec_hash="0" * 64, spec=[["k", [-1], "<f4", "p"]]), ["spec"]),
        (Hello(client_name="c", spec_hash="0" * 64, spec=[["k", [3]]]), ["spec"]),
        (Hello(client_name="c", spec_hash="f" * 1000), ["spec_hash", "1000", "128"]),
        (Error(reason="x", fatal=1), ["fatal", "int"]),
    ]
    for message, expected in cases:
        reason = _refusal(message)
        assert message.KIND.name in reason, reason
        for text in expected:
            assert text in reason, (text, reason)
        assert "\n" not in reason and len(reason) < 600, reason


def test_a_refusal_is_a_protocol_error_and_json_oddities_stay_protocol_errors():
    assert issubclass(InvalidValue, ProtocolError)
    # A number too long for Python's int parsing, or an unknown field: the frame itself is
    # wrong, not one value in it.
    header = b'{"fields":{"round":' + b"9" * 5000 + b'},"arrays":[]}'
    data = protocol.PREFIX.pack(protocol.MAGIC, 1, 5, 0, len(header), 0) + header
    with pytest.raises(ProtocolError) as info:
        protocol.decode(data)
    assert not isinstance(info.value, InvalidValue)


def test_a_refused_message_leaves_the_conversation_usable_where_the_table_allows_it():
    conversation = protocol.Conversation(protocol.Role.SERVER)
    conversation.state = protocol.State.FITTING
    problem = InvalidValue("FIT_RESULT field 'metrics' ...")
    conversation.refuse(protocol.MessageKind.FIT_RESULT, problem)
    assert conversation.state is protocol.State.READY
    with pytest.raises(ProtocolError) as info:  # not asked for: the state table's own error
        conversation.refuse(protocol.MessageKind.FIT_RESULT, problem)
    assert "state READY" in str(info.value) and not isinstance(info.value, InvalidValue)
    with pytest.raises(ProtocolError) as info:  # a malformed ERROR: nothing to keep
        conversation.refuse(protocol.MessageKind.ERROR, problem)
    assert not isinstance(info.value, InvalidValue)


def test_the_channel_skips_a_refused_messages_body_and_reads_the_next_one():
    from pyfed.wire.transport import Channel

    left, right = socket.socketpair()
    weights = (np.ones((300, 100), np.float32),)  # 120 kB: several pieces of the skip
    sender = Channel(left, protocol.Role.CLIENT, peer="server")
    receiver = Channel(right, protocol.Role.SERVER, peer="client")

    def send_both():
        for num_examples in (10**400, 5):
            sender.conversation.state = protocol.State.FITTING
            sender.send(FitResult(round=1, weights=weights, num_examples=num_examples))

    thread = threading.Thread(target=send_both, daemon=True)
    thread.start()
    try:
        receiver.conversation.state = protocol.State.FITTING
        with pytest.raises(InvalidValue):
            receiver.receive(timeout=5)
        assert receiver.conversation.state is protocol.State.READY
        receiver.conversation.state = protocol.State.FITTING
        good = receiver.receive(timeout=5)
        assert good.num_examples == 5 and np.array_equal(good.weights[0], weights[0])
    finally:
        thread.join(timeout=5)
        left.close()
        right.close()


def test_the_history_keeps_at_most_max_history_keys_names_over_a_run(caplog):
    from pyfed.tracking.history import History

    history = History(max_keys=5)
    for server_round in range(1, 5):
        history.record(server_round, {"participants": 2, **{f"r{server_round}_{i}": 0.1
                                                            for i in range(3)}})
    assert len(history.history) == 5 and history.rounds == [1, 2, 3, 4]
    assert all(len(series) == 4 for series in history.history.values())
    assert history.history["participants"] == [2] * 4
    assert caplog.text.count("new ones") == 1  # said once, not every round
    assert History().max_keys == limits.MAX_HISTORY_KEYS


def test_metric_names_are_escaped_in_progress_lines_and_tensorboard_tags(tmp_path):
    from pyfed.tracking.logs import RunLogger, format_metrics, round_line

    line = round_line(1, 2, 3, {FORGED: 0.5, "loss": 1.0}, 1.0, 10, 10)
    assert "\n" not in line and ESCAPED in line and line.startswith("round 1/2")
    assert "\n" not in format_metrics("eval", {FORGED: 1.0})
    logger = RunLogger(tmp_path)
    logger.client_history("c", {FORGED: [0.5]}, 0)
    logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [folder] = list((tmp_path / "clients").iterdir())
    events = EventAccumulator(str(folder))
    events.Reload()
    [tag] = events.Tags()["scalars"]
    assert "\n" not in tag and ESCAPED in tag
