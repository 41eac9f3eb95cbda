"""Hostile input against a live FL_Server process: garbage, slow peers, floods, bad updates, fuzz.

Every test runs a real server process (``hostile_roles.py server``, numpy SoftmaxRegression, so
it starts in a fraction of a second) on 127.0.0.1 and attacks it through raw sockets or
hand-written protocol clients (``hostile_roles.py evil-client``). Each test ends by checking that
legitimate clients still finish their rounds: a hostile peer may lose its own connection, never
the server's.

The decoder alone is fuzzed with hypothesis in ``test_protocol.py``; the fuzz here goes through
the whole server (accept loop, threads, handshake, state table) over real sockets.

Every loop is bounded in count and in time; every process is ended by PID and reaped by
``ProcessGroup`` in its ``with`` block.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hostile_roles import decode_frames, drain_until_closed, is_closed_now
from procs import ProcessGroup

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.probes import proc_status  # noqa: E402  (the benchmark's /proc reader, Threads included)

from pyfed.wire import protocol
from pyfed.wire.messages import (Auth, Challenge, Error, Evaluate, EvaluateResult, Finish, Fit,
                            FitResult, Hello, MessageKind, Ping, Welcome)

HOSTILE = Path(__file__).with_name("hostile_roles.py")
LOOPBACK = "127.0.0.1"

# How many inputs the live fuzz sends (one connection each); asserted as a floor.
FUZZ_TARGET_INPUTS = 2400
# Filled in by the fuzz test (counts, memory, threads) so a report can quote the numbers.
FUZZ_STATS: dict = {}


# ---------------------------------------------------------------------------------------------
# Helpers: processes
# ---------------------------------------------------------------------------------------------


def wait_for(group: ProcessGroup, name: str, pattern: str, timeout: float) -> re.Match:
    """The first line of ``name``'s output matching ``pattern``, polled for at most ``timeout``."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        output = group.output(name)
        match = regex.search(output)
        if match:
            return match
        if group.procs[name].poll() is not None:
            raise AssertionError(f"{name} exited (rc={group.procs[name].returncode}) before "
                                 f"printing {pattern!r}:\n{group.dump()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not print {pattern!r} within {timeout} s:\n"
                                 + group.dump())
        time.sleep(0.05)


def start_server(group: ProcessGroup, tmp_path: Path, name: str = "server", **options) -> int:
    argv = [sys.executable, HOSTILE, "server", "--port", 0, "--logdir", tmp_path / "logs"]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-"), value]
    group.start(name, argv)
    return int(wait_for(group, name, r"^READY (\d+)$", 20).group(1))


def start_honest(group: ProcessGroup, tmp_path: Path, port: int, index: int,
                 fit_delay: float = 0.0) -> None:
    group.start(f"honest_{index}", [sys.executable, HOSTILE, "honest-client", "--port", port,
                                    "--index", index, "--logdir", tmp_path / "logs",
                                    "--fit-delay", fit_delay, "--connect-timeout", 15])


def start_evil(group: ProcessGroup, port: int, modes: list[str], name: str = "evil",
               **options) -> None:
    argv = [sys.executable, HOSTILE, "evil-client", "--port", port, "--modes", ",".join(modes)]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-"), value]
    group.start(name, argv)


def tagged_lines(output: str, tag: str) -> list[dict]:
    return [json.loads(line[len(tag) + 1:]) for line in output.splitlines()
            if line.startswith(tag + " ")]


def server_result(group: ProcessGroup, name: str = "server") -> dict:
    lines = tagged_lines(group.output(name), "RESULT")
    assert lines, f"{name} printed no RESULT:\n{group.dump()}"
    return lines[-1]["history"]


def assert_no_traceback(group: ProcessGroup, name: str = "server") -> None:
    """Hostile input must be handled as an expected error, never as a crash in a handler."""
    output = group.output(name)
    assert "Traceback" not in output, f"{name} logged a traceback:\n{output[-4000:]}"


def finish_all(group: ProcessGroup, timeout: float, server: str = "server") -> None:
    """The server first (so a dead server fails the test at once), then everyone else."""
    deadline = time.monotonic() + timeout
    code = group.wait(server, timeout)
    assert code == 0, f"{server} exited with {code}\n{group.dump()}"
    codes = {name: group.wait(name, max(0.1, deadline - time.monotonic()))
             for name in group.procs if name != server}
    assert all(c == 0 for c in codes.values()), f"exit codes {codes}\n{group.dump()}"


# ---------------------------------------------------------------------------------------------
# Helpers: raw connections
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    closed: bool  # the server closed (EOF or reset) within the wait
    data: bytes = b""  # what the server sent before closing
    seconds: float = 0.0
    refused: bool = False


def send_and_drain(port: int, payload: bytes, timeout: float, connect_timeout: float = 5.0) -> Outcome:
    """Connect, send ``payload``, half-close, read until the server closes (or ``timeout``)."""
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=connect_timeout)
    except OSError:
        return Outcome(closed=True, refused=True)
    try:
        start = time.monotonic()
        try:
            if payload:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return Outcome(closed=True, seconds=time.monotonic() - start)
        except OSError:
            return Outcome(closed=True, seconds=time.monotonic() - start)
        closed, data, _ = drain_until_closed(sock, timeout)
        return Outcome(closed=closed, data=data, seconds=time.monotonic() - start)
    finally:
        sock.close()


def frame(message) -> bytes:
    return protocol.encode_bytes(message)


def raw_prefix(kind: int, header_length: int, body_length: int, magic: bytes = protocol.MAGIC,
               version: int = protocol.VERSION, flags: int = 0) -> bytes:
    return protocol.PREFIX.pack(magic, version, kind, flags, header_length, body_length)


def tls_client_hello() -> bytes:
    """The bytes a real TLS client sends first (made by the ssl module, never sent elsewhere)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def only_error_frames(data: bytes) -> list:
    """A server may answer garbage with ERROR frames before closing, and with nothing else."""
    frames = decode_frames(data)
    assert all(isinstance(f, Error) for f in frames), frames
    return frames


# ---------------------------------------------------------------------------------------------
# 1. Garbage on the port
# ---------------------------------------------------------------------------------------------


def garbage_inputs() -> dict[str, bytes]:
    rng = random.Random(1)
    hello = frame(Hello(client_name="garbage"))
    header = json.dumps({"fields": {"client_name": "x"}, "arrays": []}).encode()
    return {
        "http_get": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n",
        "http_post": b"POST /fit HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
        "tls_client_hello": tls_client_hello(),
        "ssh_banner": b"SSH-2.0-OpenSSH_9.6\r\n",
        "random_4k": rng.randbytes(4096),
        "random_1m": rng.randbytes(1 << 20),
        "zeros_64": bytes(64),
        "nothing": b"",
        "one_byte": b"P",
        "bad_magic": raw_prefix(MessageKind.HELLO, len(header), 0, magic=b"PYFX") + header,
        "bad_version": raw_prefix(MessageKind.HELLO, len(header), 0, version=99) + header,
        "unknown_kind": raw_prefix(200, len(header), 0) + header,
        "nonzero_flags": raw_prefix(MessageKind.HELLO, len(header), 0, flags=7) + header,
        "header_just_over_handshake_cap": raw_prefix(MessageKind.HELLO, (64 << 10) + 1, 0)
        + header,
        "header_4gib": raw_prefix(MessageKind.HELLO, 0xFFFFFFFF, 0) + header,
        "header_length_zero": raw_prefix(MessageKind.HELLO, 0, 0),
        "body_before_handshake": raw_prefix(MessageKind.HELLO, len(header), 1 << 40) + header,
        "body_2_to_64": raw_prefix(MessageKind.FIT_RESULT, len(header), (1 << 64) - 1) + header,
        "valid_prefix_then_eof": hello[:protocol.PREFIX_SIZE],
        "valid_prefix_half_header_then_eof": hello[:protocol.PREFIX_SIZE + 10],
        "hello_minus_one_byte": hello[:-1],
        "header_not_json": raw_prefix(MessageKind.HELLO, 12, 0) + b"not json!!!!",
        "header_not_utf8": raw_prefix(MessageKind.HELLO, 4, 0) + b"\xff\xfe\xfd\xfc",
        "json_nesting_bomb": raw_prefix(MessageKind.HELLO, 60000, 0) + b"[" * 60000,
        "ping_before_hello": frame(Ping()),
        "fit_before_hello": frame(Fit(round=1)),
        "welcome_from_a_client": frame(Welcome(client_id="x", rounds=1, run_name="r", run_id="i")),
        "error_before_hello": frame(Error(reason="boom")),
        "hello_bad_name": frame(Hello(client_name="\x00" * 10)),
        "hello_huge_name": frame(Hello(client_name="n" * 50_000)),
        "hello_log_injection": frame(Hello(client_name="evil\nINJECTED fake log line")),
        "hello_version_99": frame(Hello(client_name="garbage_v99", protocol_version=99)),
        "hello_wrong_model": frame(Hello(client_name="garbage_model", spec_hash="0" * 64)),
    }


# Refusals the server explains with an ERROR frame (a proper HELLO it can answer).
EXPLAINED = {"hello_bad_name": "bad_name", "hello_huge_name": "bad_name",
             "hello_log_injection": "bad_name",
             "hello_version_99": "version", "hello_wrong_model": "model_mismatch"}


def test_garbage_on_the_port_then_legitimate_clients_finish(tmp_path):
    max_message_bytes = 1 << 20
    declared = 1 << 40  # what the evil client claims its FIT_RESULT body is: 1 TiB
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=3, rounds=2, handshake_timeout=5,
                            max_message_bytes=max_message_bytes)
        outcomes = {label: send_and_drain(port, payload, timeout=4)
                    for label, payload in garbage_inputs().items()}
        assert group.procs["server"].poll() is None, group.dump()
        assert not [l for l, o in outcomes.items() if o.refused], "server stopped accepting"
        left_open = {label: round(o.seconds, 2) for label, o in outcomes.items() if not o.closed}
        assert not left_open, f"server did not close these connections within 4 s: {left_open}"
        for label, outcome in outcomes.items():
            frames = only_error_frames(outcome.data)
            if label in EXPLAINED:
                assert [f.code for f in frames] == [EXPLAINED[label]], (label, frames)

        # A welcomed client whose FIT_RESULT declares a body above max_message_bytes: rejected
        # from the prefix (before any allocation), its connection closed; the round goes on.
        start_evil(group, port, ["oversize-body"], declared_body=declared, timeout=30)
        wait_for(group, "evil", r"^WELCOMED ", 15)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=45)
        history = server_result(group)
        assert history["rounds"] == [1, 2]
        assert history["history"]["participants"] == [2, 2]
        assert history["history"]["clients"] == [["honest_1", "honest_2"]] * 2
        closed = tagged_lines(group.output("evil"), "CLOSED")
        assert closed and closed[0]["seconds"] < 3, group.output("evil")
        log = group.output("server")
        assert str(declared) in log, "the ProtocolError should name the declared body length"
        # A client's name is data, never log structure: no forged line from a name with "\n".
        forged = [line for line in log.splitlines() if line.startswith("INJECTED")]
        assert not forged, f"a client name wrote its own line into the server log: {forged}"
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 2. Handshake timeout: silent peers and one-byte-at-a-time peers
# ---------------------------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 2.0
CLOSE_GRACE = 2.0  # the server may take this long past handshake_timeout to hang up


def _silent(port: int, result: dict) -> None:
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        closed, data, seconds = drain_until_closed(sock, HANDSHAKE_TIMEOUT + CLOSE_GRACE + 1.5)
        result["silent"] = (closed, seconds, data)
    finally:
        sock.close()


def _dribble(port: int, result: dict) -> None:
    """Send a valid HELLO one byte every 0.5 s; note when the server hangs up."""
    hello = frame(Hello(client_name="dribbler"))
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        start = time.monotonic()
        limit = start + HANDSHAKE_TIMEOUT + CLOSE_GRACE + 1.5
        sent = 0
        while sent < len(hello) and time.monotonic() < limit:  # bounded by bytes and time
            if is_closed_now(sock):
                result["dribbler"] = (True, time.monotonic() - start, sent)
                return
            try:
                sock.sendall(hello[sent:sent + 1])
            except OSError:
                result["dribbler"] = (True, time.monotonic() - start, sent)
                return
            sent += 1
            time.sleep(0.5)
        result["dribbler"] = (is_closed_now(sock), time.monotonic() - start, sent)
    finally:
        sock.close()


def test_handshake_timeout_covers_the_whole_handshake(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=1, rounds=1,
                            handshake_timeout=HANDSHAKE_TIMEOUT)
        result: dict = {}
        threads = [threading.Thread(target=_silent, args=(port, result), daemon=True),
                   threading.Thread(target=_dribble, args=(port, result), daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=HANDSHAKE_TIMEOUT + CLOSE_GRACE + 10)
        assert set(result) == {"silent", "dribbler"}, result
        bound = HANDSHAKE_TIMEOUT + CLOSE_GRACE
        silent_closed, silent_seconds, silent_data = result["silent"]
        assert silent_closed and silent_seconds <= bound, (
            f"silent connection: closed={silent_closed} after {silent_seconds:.2f} s; the server "
            f"must hang up within handshake_timeout={HANDSHAKE_TIMEOUT} s (+{CLOSE_GRACE} s)")
        only_error_frames(silent_data)
        dribble_closed, dribble_seconds, dribbled = result["dribbler"]
        assert dribble_closed and dribble_seconds <= bound, (
            f"dribbling connection (1 byte / 0.5 s of a valid HELLO): closed={dribble_closed} "
            f"after {dribble_seconds:.2f} s and {dribbled} bytes; handshake_timeout must bound "
            f"the WHOLE handshake, not each recv")

        start_honest(group, tmp_path, port, 1)
        finish_all(group, timeout=30)
        assert server_result(group)["history"]["participants"] == [1]
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 3. max_connections
# ---------------------------------------------------------------------------------------------


def test_max_connections_caps_idle_connections_without_hurting_training(tmp_path):
    rounds = 40
    with ProcessGroup(tmp_path / "procs") as group:
        # A long handshake_timeout, so a connection closed quickly was closed by the cap.
        port = start_server(group, tmp_path, clients=2, rounds=rounds, max_connections=4,
                            handshake_timeout=30)
        start_honest(group, tmp_path, port, 1, fit_delay=0.15)
        start_honest(group, tmp_path, port, 2, fit_delay=0.15)
        wait_for(group, "server", rf"^round 1/{rounds} ", 20)

        idle = []
        try:
            for _ in range(10):
                idle.append(socket.create_connection((LOOPBACK, port), timeout=5))
            time.sleep(1.5)  # "promptly": every connection over the cap is gone by now
            open_now = [s for s in idle if not is_closed_now(s)]
            assert len(open_now) <= 2, (
                f"{len(open_now)} of 10 idle connections are still open 1.5 s later; with "
                f"max_connections=4 and 2 clients training, at most 2 may be kept")
            assert group.procs["server"].poll() is None, group.dump()
            for name in ("honest_1", "honest_2"):
                assert group.procs[name].poll() is None, f"{name} was hurt:\n{group.dump()}"
        finally:
            for s in idle:
                s.close()

        # The slots of closed connections are given back: two new ones are kept again.
        time.sleep(0.5)
        again = []
        try:
            for _ in range(2):
                again.append(socket.create_connection((LOOPBACK, port), timeout=5))
            time.sleep(0.5)
            still_training = "RESULT " not in group.output("server")
            if still_training:
                kept = [s for s in again if not is_closed_now(s)]
                assert len(kept) == 2, "slots were not released when idle connections closed"
        finally:
            for s in again:
                s.close()

        finish_all(group, timeout=60)
        history = server_result(group)
        assert history["history"]["participants"] == [2] * rounds
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 4. Update validation
# ---------------------------------------------------------------------------------------------

MAX_EXAMPLES = 10_000


def _has(pattern: str, flags=re.IGNORECASE):
    return lambda reason: re.search(pattern, reason, flags) is not None


# mode -> checks on the ERROR reason: it must say what was wrong and what was expected.
REJECTIONS = {
    "nan": [_has(r"NaN", 0)],
    "inf": [_has(r"Inf", 0)],
    "huge": [_has(r"-3e\+38"), _has(r"1e\+18")],
    "wrong-shape": [_has(r"shape"), _has(r"\b63\b"), _has(r"64, ?10")],
    "wrong-dtype": [_has(r"dtype"), _has(r"f8|float64"), _has(r"f4|float32")],
    "missing-tensor": [_has(r"tensor"), _has(r"\b1\b"), _has(r"\b2\b")],
    "zero-examples": [_has(r"num_examples"), _has(r"\b0\b")],
    "negative-examples": [_has(r"num_examples"), _has(r"-5\b")],
    "huge-examples": [_has(r"num_examples"), _has(str(MAX_EXAMPLES + 1)),
                      _has(str(MAX_EXAMPLES))],
}


# Refused on the header (fatal), the rest after reading the body (not fatal).
LAYOUT_REFUSALS = {"wrong-shape", "wrong-dtype", "missing-tensor"}


def _start_evil_federation(group: ProcessGroup, tmp_path, modes: list[str], rounds: int,
                           timeout: float) -> None:
    """A server waiting for every evil connection plus two honest clients (all are sampled)."""
    port = start_server(group, tmp_path, clients=2 + len(modes), rounds=rounds,
                        max_examples=MAX_EXAMPLES)
    start_evil(group, port, modes, huge_examples=MAX_EXAMPLES + 1, timeout=timeout)
    start_honest(group, tmp_path, port, 1)
    start_honest(group, tmp_path, port, 2)


def test_invalid_updates_are_rejected_with_a_reason_and_the_round_goes_on(tmp_path):
    rounds = 2
    modes = list(REJECTIONS)
    with ProcessGroup(tmp_path / "procs") as group:
        _start_evil_federation(group, tmp_path, modes, rounds, timeout=40)
        finish_all(group, timeout=45)
        evil_output = group.output("evil")
        rejected = tagged_lines(evil_output, "REJECTED")
        problems = []
        for mode, checks in REJECTIONS.items():
            mine = [r for r in rejected if r["mode"] == mode]
            # Arrays that are not the model's are refused on the header, before the body is
            # read: the stream is then mid-frame, so the refusal is fatal (once, then closed).
            # A bad value is found in a body that was read: refused, and the client stays.
            expected = 1 if mode in LAYOUT_REFUSALS else rounds
            if len(mine) != expected:
                problems.append(f"{mode}: {len(mine)} rejections for {rounds} rounds")
                continue
            for r in mine:
                if r["code"] != "update_rejected" or r["fatal"] != (mode in LAYOUT_REFUSALS):
                    problems.append(f"{mode}: code={r['code']!r} fatal={r['fatal']}")
                failed = [i for i, check in enumerate(checks) if not check(r["reason"])]
                if failed:
                    problems.append(f"{mode}: reason {r['reason']!r} misses check(s) {failed}")
        finished = {r["mode"] for r in tagged_lines(evil_output, "FINISHED")}
        missing = set(modes) - LAYOUT_REFUSALS - finished
        if missing:
            problems.append(f"no FINISH for {sorted(missing)}")
        assert not problems, "\n".join(problems) + "\n" + evil_output[-3000:]

        history = server_result(group)
        assert history["history"]["participants"] == [2] * rounds
        assert history["history"]["clients"] == [["honest_1", "honest_2"]] * rounds
        assert_no_traceback(group)


def test_a_result_for_the_wrong_round_is_rejected_and_the_round_goes_on(tmp_path):
    rounds = 2
    with ProcessGroup(tmp_path / "procs") as group:
        _start_evil_federation(group, tmp_path, ["wrong-round"], rounds, timeout=15)
        finish_all(group, timeout=15)
        rejected = tagged_lines(group.output("evil"), "REJECTED")
        assert len(rejected) == rounds, group.dump()
        for server_round, r in enumerate(rejected, start=1):
            assert r["code"] == "update_rejected" and not r["fatal"], r
            assert re.search(r"round", r["reason"]), r
            assert str(server_round + 7) in r["reason"] and str(server_round) in r["reason"], r
        history = server_result(group)
        assert history["history"]["participants"] == [2] * rounds
        assert all(s < 10 for s in history["history"]["round_seconds"]), history
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 5. Messages that are illegal in the connection's state
# ---------------------------------------------------------------------------------------------


def _illegal_run(tmp_path, mode: str, before_honest=None):
    """One evil connection doing ``mode`` joins first; then two honest clients run 2 rounds.

    With ``--clients 2`` the test passes whether the server notices the violation at once
    (reading idle connections) or only when it next talks to that client: either way the evil
    client must be dropped, never counted, and the run must finish.
    """
    rounds = 2
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2, rounds=rounds)
        extra = before_honest(port) if before_honest else None
        start_evil(group, port, [mode], timeout=30)
        wait_for(group, "evil", r"^WELCOMED ", 15)
        time.sleep(0.3)
        # A server that only finds out at FIT may start round 1 before honest_2 has joined;
        # slow rounds give it time to join for round 2.
        start_honest(group, tmp_path, port, 1, fit_delay=0.3)
        start_honest(group, tmp_path, port, 2, fit_delay=0.3)
        finish_all(group, timeout=40)
        history = server_result(group)
        assert history["rounds"] == list(range(1, rounds + 1))
        for clients in history["history"]["clients"]:
            assert clients and set(clients) <= {"honest_1", "honest_2"}, history
        assert set().union(*history["history"]["clients"]) == {"honest_1", "honest_2"}, history
        evil = group.output("evil")
        assert tagged_lines(evil, "CLOSED"), f"the server never hung up on {mode}:\n{evil}"
        assert_no_traceback(group)
        return group.output("server"), extra


def test_second_hello_and_fit_result_before_hello_are_protocol_errors(tmp_path):
    def result_before_hello(port):
        return send_and_drain(port, frame(FitResult(round=1)), timeout=4)

    log, early = _illegal_run(tmp_path, "second-hello", before_honest=result_before_hello)
    assert early.closed and early.seconds < 3, early
    only_error_frames(early.data)
    assert re.search(r"received FIT_RESULT from the client in state START", log), log[-3000:]
    assert re.search(r"received HELLO from the client in state (READY|FITTING)", log), log[-3000:]


def test_fit_result_before_fit_is_a_protocol_error(tmp_path):
    # The early FIT_RESULT carries round 1 and well-formed weights: a server that only reads a
    # client after sending it FIT would take it for a genuine answer to round 1.
    log, _ = _illegal_run(tmp_path, "early-result")
    assert re.search(r"received FIT_RESULT from the client in state READY", log), log[-3000:]


def test_clients_gone_after_welcome_do_not_count_or_fail_the_round(tmp_path):
    """Welcomed clients that vanish, or send garbage, while idle must not fill the quorum.

    They join one at a time, each already gone (or garbage sent) a second before the next
    arrives: whether the server reads idle connections or checks its clients before a round,
    it knows. A server that only finds out when it sends FIT starts round 1 with two dead
    clients and fails it.
    """
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2, rounds=2)
        start_evil(group, port, ["leave"], name="evil_leave", timeout=20)
        assert group.wait("evil_leave", 15) == 0, group.dump()
        time.sleep(1.0)
        start_evil(group, port, ["garbage-after-welcome"], name="evil_garbage", timeout=20)
        wait_for(group, "evil_garbage", r"^WELCOMED ", 15)
        time.sleep(1.0)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=40)
        history = server_result(group)
        assert history["history"]["participants"] == [2, 2], history
        assert history["history"]["clients"] == [["honest_1", "honest_2"]] * 2
        assert tagged_lines(group.output("evil_garbage"), "CLOSED"), group.output("evil_garbage")
        assert_no_traceback(group)


def test_sigterm_stops_a_server_stuck_on_a_silent_client_promptly(tmp_path):
    """An operator's way out of a round a hostile client stalls: SIGTERM, honoured at once."""
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=3, rounds=2)
        start_evil(group, port, ["silent"], timeout=30)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        wait_for(group, "evil", r"^GOT_FIT ", 15)
        time.sleep(0.5)  # the honest clients have answered; the round waits on the silent one
        server = group.procs["server"]
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=5)
        except Exception:  # noqa: BLE001  (subprocess.TimeoutExpired: reported below)
            code = None
        seconds = time.monotonic() - started
        assert code is not None, (
            f"server still running {seconds:.1f} s after SIGTERM (3 clients connected)"
            f"\n{group.output('server')[-2000:]}")
        assert code == 130, f"exit status {code}\n{group.output('server')[-2000:]}"
        codes = [r["code"] for r in tagged_lines(group.output("evil"), "REJECTED")]
        assert "server_stopped" in codes, group.output("evil")


# ---------------------------------------------------------------------------------------------
# 6. Live fuzz
# ---------------------------------------------------------------------------------------------

FUZZ_THREADS = 4
FUZZ_DRAIN_SECONDS = 2.0  # per connection; the server should hang up in milliseconds
FUZZ_TIME_BUDGET = 45.0  # the whole fuzz stops here even if the server is slow
# Memory bounds, on the server's RSS measured from /proc/<pid>/status. Before the handshake a
# peer can make the server hold at most a 64 KiB header (the body cap is 0) and one thread per
# connection, and only FUZZ_THREADS connections are in flight at once (welcomed fuzz clients
# come one at a time, with a 1 MiB max_message_bytes), so a correct server's peak grows by well
# under 1 MiB plus allocator slack: about 0.5 MiB measured. 32 MiB of peak growth is far above
# that, yet trips on either real failure: allocating from a declared length (the fuzz declares
# headers up to 4 GiB and bodies up to 2**64 - 1) or from a summed one, and 16 MiB of growth
# that stays after the fuzz trips on a leak of ~7 KiB per connection (2,400 connections).
FUZZ_PEAK_GROWTH_BOUND = 32 << 20
FUZZ_LASTING_GROWTH_BOUND = 16 << 20
FUZZ_THREAD_SLACK = 4  # threads above the pre-fuzz count once all fuzz connections are closed


def _valid_frames() -> list[bytes]:
    return [frame(m) for m in (
        Hello(client_name="fuzz"),
        Hello(client_name="fuzz2", spec_hash="ab" * 32, nonce="00" * 16, evaluates=True),
        Ping(),
        Auth(proof="00" * 32),
        Challenge(nonce="11" * 16, proof="22" * 32),
        Welcome(client_id="x", rounds=1, run_name="r", run_id="i", config={"a": [1, 2]}),
        Fit(round=1, weights=(np.arange(12, dtype="<f4").reshape(3, 4), np.ones(5, "<i8"))),
        FitResult(round=1, weights=(np.zeros((64, 10), "<f4"), np.zeros(10, "<f4")),
                  num_examples=10, metrics={"loss": 0.1}),
        EvaluateResult(round=1, num_examples=3, loss=0.5),
        Evaluate(round=1),
        Finish(),
        Error(reason="boom", fatal=False),
    )]


_JSON_ODDITIES = [None, -1, 0, 2**70, -2**63, 1e308, "", "x" * 300, [], {}, True, 1.5,
                  "\u202e\u0000", [[[[[]]]]], {"k": {"k": {"k": 1}}}]


class Fuzzer:
    """Makes inputs: random bytes and mutations of valid frames. Deterministic per seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.frames = _valid_frames()
        self.serial = 0

    def _base(self) -> bytes:
        return self.rng.choice(self.frames)

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, 4096))

    def bit_flips(self) -> bytes:
        data = bytearray(self._base())
        for _ in range(self.rng.randint(1, 16)):
            i = self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def truncated(self) -> bytes:
        data = self._base()
        return data[:self.rng.randrange(len(data))]

    def inserted(self) -> bytes:
        data = self._base()
        i = self.rng.randrange(len(data) + 1)
        return data[:i] + self.rng.randbytes(self.rng.randint(1, 64)) + data[i:]

    def duplicated_chunk(self) -> bytes:
        data = self._base()
        i = self.rng.randrange(len(data))
        j = self.rng.randint(i + 1, min(len(data), i + 256))
        return data[:j] + data[i:j] * self.rng.randint(1, 4) + data[j:]

    def lengths_rewritten(self) -> bytes:
        data = bytearray(self._base())
        total_header = len(data) - protocol.PREFIX_SIZE
        if self.rng.random() < 0.5:
            value = self.rng.choice([0, 1, 2, total_header - 1, total_header + 1, 65535,
                                     (64 << 10) + 1, (1 << 20) + 1, 0xFFFFFFFF,
                                     self.rng.randrange(1 << 32)])
            data[8:12] = value.to_bytes(4, "big")
        else:
            value = self.rng.choice([1, 63, 64, 1 << 20, (1 << 20) + 1, 1 << 31, 1 << 40,
                                     1 << 63, (1 << 64) - 1, self.rng.randrange(1 << 64)])
            data[12:20] = value.to_bytes(8, "big")
        return bytes(data)

    def oversized_declared(self) -> bytes:
        kind = self.rng.randint(1, 11)
        header_length = self.rng.choice([(64 << 10) + 1, 1 << 24, 0xFFFFFFFF, 50])
        body_length = self.rng.choice([0, 1 << 30, 1 << 40, (1 << 64) - 1])
        return raw_prefix(kind, header_length, body_length) + self.rng.randbytes(
            self.rng.randint(0, 512))

    def prefix_then_garbage(self) -> bytes:
        return self._base()[:protocol.PREFIX_SIZE] + self.rng.randbytes(self.rng.randint(0, 2048))

    def header_values_mutated(self) -> bytes:
        """A structurally valid prefix and JSON header whose values are of the wrong kind."""
        data = self._base()
        prefix = protocol.parse_prefix(data[:protocol.PREFIX_SIZE], protocol.FrameLimits())
        header = json.loads(data[protocol.PREFIX_SIZE:protocol.PREFIX_SIZE + prefix.header_length])
        body = data[protocol.PREFIX_SIZE + prefix.header_length:]
        target = header["fields"]
        if header["arrays"] and self.rng.random() < 0.5:
            target = self.rng.choice(header["arrays"])
        if target and self.rng.random() < 0.8:
            key = self.rng.choice(sorted(target))
        else:
            key = self.rng.choice(["extra", "fields", "__proto__", "weights"])
        target[key] = self.rng.choice(_JSON_ODDITIES)
        raw = json.dumps(header).encode()
        return raw_prefix(prefix.kind, len(raw), len(body)) + raw + body

    def hello_then_garbage(self) -> bytes:
        self.serial += 1
        hello = frame(Hello(client_name=f"fuzz_{self.serial}"))
        tail = self.rng.choice([self.rng.randbytes(self.rng.randint(1, 512)),
                                self.frames[self.rng.randrange(2, len(self.frames))],
                                hello])
        return hello + tail

    def concatenated(self) -> bytes:
        return b"".join(self.rng.choice(self.frames) for _ in range(self.rng.randint(2, 4)))

    MUTATORS = ("random_bytes", "bit_flips", "truncated", "inserted", "duplicated_chunk",
                "lengths_rewritten", "oversized_declared", "prefix_then_garbage",
                "header_values_mutated", "hello_then_garbage", "concatenated")

    def make(self) -> tuple[str, bytes]:
        name = self.rng.choice(self.MUTATORS)
        return name, getattr(self, name)()


def could_become_a_session(data: bytes) -> bool:
    """Only an input whose first frame is a plausible HELLO can get a WELCOME."""
    try:
        prefix = protocol.parse_prefix(data[:protocol.PREFIX_SIZE], protocol.HANDSHAKE_LIMITS)
    except protocol.ProtocolError:
        return False
    return prefix.kind is MessageKind.HELLO


@dataclass
class FuzzTally:
    sent: int = 0
    refused: int = 0
    left_open: dict = field(default_factory=dict)  # mutator -> count
    answered_with: dict = field(default_factory=dict)  # frame kind -> count
    bad_replies: list = field(default_factory=list)
    by_mutator: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, mutator: str, outcome: Outcome) -> None:
        with self.lock:
            if outcome.refused:
                self.refused += 1
                return
            self.sent += 1
            self.by_mutator[mutator] = self.by_mutator.get(mutator, 0) + 1
            if not outcome.closed:
                self.left_open[mutator] = self.left_open.get(mutator, 0) + 1
            try:
                for f in decode_frames(outcome.data):
                    self.answered_with[f.KIND.name] = self.answered_with.get(f.KIND.name, 0) + 1
                    if f.KIND.name not in SERVER_SENDS:
                        self.bad_replies.append((mutator, f.KIND.name))
            except Exception as exc:  # noqa: BLE001  (a partial frame before a reset is fine)
                if outcome.data and len(self.bad_replies) < 20 and not _is_frame_prefix(outcome.data):
                    self.bad_replies.append((mutator, f"undecodable reply: {exc}"))


SERVER_SENDS = {"ERROR", "WELCOME", "CHALLENGE", "FIT", "EVALUATE", "FINISH", "PING"}


def _is_frame_prefix(data: bytes) -> bool:
    return data[:4] == protocol.MAGIC[:len(data[:4])]


def _fuzz_worker(port: int, inputs: list, tally: FuzzTally, deadline: float,
                 stop: threading.Event) -> None:
    for mutator, payload in inputs:  # bounded by the list and by the deadline
        if stop.is_set() or time.monotonic() > deadline:
            return
        outcome = send_and_drain(port, payload, timeout=FUZZ_DRAIN_SECONDS, connect_timeout=3)
        tally.record(mutator, outcome)
        if outcome.refused:
            stop.set()  # the server is gone: no point in going on
            return


def test_live_fuzz_thousands_of_inputs_then_a_normal_round(tmp_path):
    fuzzer = Fuzzer(seed=20240601)
    inputs = [fuzzer.make() for _ in range(FUZZ_TARGET_INPUTS)]
    parallel = [i for i in inputs if not could_become_a_session(i[1])]
    serial = [i for i in inputs if could_become_a_session(i[1])]

    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2, rounds=1, handshake_timeout=30,
                            max_message_bytes=1 << 20)
        pid = group.procs["server"].pid
        for _ in range(20):  # warm up threads and allocator before the baseline
            send_and_drain(port, b"warm-up garbage!!!!!!!", timeout=2)
        time.sleep(0.3)
        before = proc_status(pid)

        tally = FuzzTally()
        stop = threading.Event()
        started = time.monotonic()
        deadline = started + FUZZ_TIME_BUDGET
        # Phase A, in parallel: inputs that can never complete a handshake.
        shards = [parallel[i::FUZZ_THREADS] for i in range(FUZZ_THREADS)]
        workers = [threading.Thread(target=_fuzz_worker, args=(port, shard, tally, deadline, stop),
                                    daemon=True) for shard in shards]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=FUZZ_TIME_BUDGET + 10)
        phase_a = {"sent": tally.sent, "left_open": dict(tally.left_open)}
        after_a = proc_status(pid) if group.procs["server"].poll() is None else {}
        # Phase B, one at a time: inputs that start with a HELLO prefix. Some get a WELCOME, and
        # by then have already sent garbage or EOF (one sendall, then SHUT_WR): the server must
        # drop such a client at once (a dead client must not hold a connection slot and a
        # thread, nor count towards num_clients). One at a time, and each waits for the server
        # to hang up, so no two fuzz clients are ever welcomed together to fill the quorum of 2.
        _fuzz_worker(port, serial, tally, deadline, stop)
        seconds = time.monotonic() - started

        if tally.refused:  # a refused connect means the listener is gone: let the exit finish
            with contextlib.suppress(Exception):
                group.procs["server"].wait(timeout=5)
        alive = group.procs["server"].poll() is None
        after = proc_status(pid) if alive else after_a
        threads_settled = after.get("Threads")
        if alive:  # the server's connection threads end once the fuzz connections are closed
            settle_deadline = time.monotonic() + 3
            while time.monotonic() < settle_deadline:
                threads_settled = proc_status(pid)["Threads"]
                if threads_settled <= before["Threads"] + FUZZ_THREAD_SLACK:
                    break
                time.sleep(0.1)

        FUZZ_STATS.update({
            "inputs": tally.sent, "refused": tally.refused, "seconds": round(seconds, 2),
            "parallel_inputs": phase_a["sent"], "serial_inputs": tally.sent - phase_a["sent"],
            "by_mutator": dict(sorted(tally.by_mutator.items())),
            "left_open_parallel": phase_a["left_open"],
            "left_open_total": dict(tally.left_open),
            "answered_with": tally.answered_with,
            "rss_before": before["VmRSS"], "hwm_before": before["VmHWM"],
            "rss_after_parallel": after_a.get("VmRSS"), "rss_after": after.get("VmRSS"),
            "hwm_after": after.get("VmHWM"),
            "threads_before": before["Threads"], "threads_after": threads_settled,
            "server_alive": alive,
        })
        print(f"\nFUZZ: {tally.sent} inputs fuzzed in {seconds:.1f} s "
              f"(server alive: {alive}) " + json.dumps(FUZZ_STATS), flush=True)

        assert alive and not tally.refused, (
            f"the server stopped accepting during the fuzz (alive={alive}, refused connects="
            f"{tally.refused}, serial HELLO-prefixed inputs sent={tally.sent - phase_a['sent']}):"
            f"\n{group.dump()}")
        assert tally.sent >= FUZZ_TARGET_INPUTS - 1, (
            f"only {tally.sent} inputs reached the server in {seconds:.1f} s")
        assert not tally.left_open, (
            f"connections the server kept open > {FUZZ_DRAIN_SECONDS} s after the peer sent its "
            f"input and half-closed, by mutator (phase A: {phase_a['left_open']}; all: "
            f"{tally.left_open}); HELLO-prefixed ones were welcomed and then left idle")
        assert not tally.bad_replies, tally.bad_replies[:20]
        growth_peak = after["VmHWM"] - before["VmRSS"]
        growth_rss = after["VmRSS"] - before["VmRSS"]
        assert growth_peak < FUZZ_PEAK_GROWTH_BOUND, (
            f"server peak RSS grew by {growth_peak / 2**20:.1f} MiB during the fuzz")
        assert growth_rss < FUZZ_LASTING_GROWTH_BOUND, (
            f"server RSS is {growth_rss / 2**20:.1f} MiB higher after the fuzz (a leak?)")
        assert threads_settled <= before["Threads"] + FUZZ_THREAD_SLACK, (
            f"server threads: {before['Threads']} before, {threads_settled} after the fuzz")

        # The same server then runs its round with real clients.
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=30)
        history = server_result(group)
        assert history["history"]["participants"] == [2]
        assert history["history"]["clients"] == [["honest_1", "honest_2"]]
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 7. Slow uploads: a peer that begins a result and stalls must not hold a pool buffer
# ---------------------------------------------------------------------------------------------

UPLOAD_ROUND_TIMEOUT = 5


@pytest.mark.parametrize("slow_peers", [2, 6])
def test_stalled_and_dribbling_uploads_do_not_starve_honest_ones(tmp_path, slow_peers):
    """Slow peers each send a FIT_RESULT's prefix, header and ~100 body bytes, then stall or
    dribble a byte a second, with as many of them as the pool has buffers (2) or more (6). The
    honest uploads must still get buffers: every round closes with both honest updates, by its
    deadline, and the server ends normally."""
    rounds = 3
    modes = (["stall", "dribble"] * slow_peers)[:slow_peers]
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2 + slow_peers, rounds=rounds,
                            round_timeout=UPLOAD_ROUND_TIMEOUT, buffer_pool_size=2)
        start_evil(group, port, modes, timeout=60)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=90)
        history = server_result(group)
        assert history["rounds"] == list(range(1, rounds + 1))
        assert history["history"]["clients"] == [["honest_1", "honest_2"]] * rounds, history
        # Every slow peer started its upload and was hung up on (it never got to finish).
        evil = group.output("evil")
        assert len(tagged_lines(evil, "STARTED_UPLOAD")) == slow_peers, evil
        closed = tagged_lines(evil, "CLOSED")
        assert len(closed) == slow_peers, evil
        log = group.output("server")
        assert re.search(r"FIT_RESULT from \S+ too slow", log), log[-3000:]
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 8. Memory amplification: a body is allocated only when its header matches the model
# ---------------------------------------------------------------------------------------------

# Server peak RSS (VmHWM at the end of the run) above its RSS when it was listening, idle.
# A correct server holds one small header per attacker and the model's 2.6 kB buffers; the
# defects this guards against allocated 4 x 256 MiB (unsolicited) or 512 MiB (extra array).
AMPLIFICATION_BOUND = 16 << 20
UNSOLICITED_BODY = (256 << 20) - 1  # one byte short of 256 MiB
EXTRA_ARRAY_BYTES = 512 << 20
MODEL_FRAME_BODY = 2560 + 40  # SoftmaxRegression(64, 10): [64, 10] and [10] float32


def _memory_growth(group: ProcessGroup, before: dict) -> int:
    result = tagged_lines(group.output("server"), "RESULT")[-1]
    return result["memory"]["VmHWM"] - before["VmRSS"]


def test_unsolicited_huge_fit_results_are_refused_on_their_prefix(tmp_path):
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2, rounds=2)
        time.sleep(0.3)
        before = proc_status(group.procs["server"].pid)
        # Four connections, each HELLO then (before any FIT) a FIT_RESULT of 256 MiB - 1 bytes.
        start_evil(group, port, ["unsolicited-huge"] * 4, declared_body=UNSOLICITED_BODY,
                   timeout=30)
        assert group.wait("evil", 45) == 0, group.dump()
        closed = tagged_lines(group.output("evil"), "CLOSED")
        assert len(closed) == 4, group.output("evil")
        attack_peak = proc_status(group.procs["server"].pid)["VmHWM"] - before["VmRSS"]
        assert attack_peak < AMPLIFICATION_BOUND, (
            f"server peak RSS grew by {attack_peak / 2**20:.1f} MiB during the attack")
        # Honest clients only now: the attackers' connections are gone, the run goes on.
        start_honest(group, tmp_path, port, 1, fit_delay=0.3)
        start_honest(group, tmp_path, port, 2, fit_delay=0.3)
        finish_all(group, timeout=45)
        history = server_result(group)
        for clients in history["history"]["clients"]:
            assert clients and set(clients) <= {"honest_1", "honest_2"}, history
        log = group.output("server")
        assert re.search(r"received FIT_RESULT from the client in state READY", log), log[-3000:]
        growth = _memory_growth(group, before)
        print(f"\nMEMORY unsolicited: server peak RSS {attack_peak / 2**20:+.1f} MiB above idle "
              f"({before['VmRSS'] / 2**20:.1f} MiB) after the attack, {growth / 2**20:+.1f} MiB "
              f"after the run", flush=True)
        assert growth < AMPLIFICATION_BOUND, (
            f"server peak RSS grew by {growth / 2**20:.1f} MiB; four unsolicited 256 MiB "
            f"FIT_RESULTs must be refused on their prefix, before any allocation")
        assert_no_traceback(group)


def test_a_result_with_an_extra_huge_array_is_refused_before_its_body(tmp_path):
    rounds = 2
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=3, rounds=rounds)
        time.sleep(0.3)
        before = proc_status(group.procs["server"].pid)
        start_evil(group, port, ["extra-array"], extra_bytes=EXTRA_ARRAY_BYTES, timeout=40)
        start_honest(group, tmp_path, port, 1)
        start_honest(group, tmp_path, port, 2)
        finish_all(group, timeout=60)
        rejected = tagged_lines(group.output("evil"), "REJECTED")
        assert len(rejected) == 1, group.output("evil")
        refusal = rejected[0]
        assert refusal["fatal"] and refusal["code"] == "update_rejected", refusal
        assert re.search(r"3 arrays; expected 2 arrays", refusal["reason"]), refusal
        history = server_result(group)
        assert history["history"]["clients"] == [["honest_1", "honest_2"]] * rounds
        result = tagged_lines(group.output("server"), "RESULT")[-1]
        assert result["pool"]["largest"] == MODEL_FRAME_BODY, result["pool"]
        growth = _memory_growth(group, before)
        print(f"\nMEMORY extra array: server peak RSS {growth / 2**20:+.1f} MiB above idle "
              f"({before['VmRSS'] / 2**20:.1f} MiB); largest pool buffer "
              f"{result['pool']['largest']} bytes", flush=True)
        assert growth < AMPLIFICATION_BOUND, (
            f"server peak RSS grew by {growth / 2**20:.1f} MiB for a result carrying an extra "
            f"{EXTRA_ARRAY_BYTES >> 20} MiB array; it must be refused on its header")
        assert_no_traceback(group)


# ---------------------------------------------------------------------------------------------
# 9. File descriptors: RLIMIT_NOFILE 1024 and 1,100 idle connections during training
# ---------------------------------------------------------------------------------------------

FLOOD_CONNECTIONS = 1100
SERVER_NOFILE = 1024


def test_an_idle_connection_flood_at_the_file_limit_does_not_stop_training(tmp_path):
    """Under a 1024 open-file limit, 1,100 idle connections arrive mid-training and stay a few
    seconds. The server refuses what its limit has no room for (it keeps descriptors for its
    checkpoints and TensorBoard files), keeps training, and every round checkpoints."""
    rounds = 40  # at 0.25 s a round, training outlasts the flood
    with ProcessGroup(tmp_path / "procs") as group:
        port = start_server(group, tmp_path, clients=2, rounds=rounds, nofile=SERVER_NOFILE,
                            handshake_timeout=30)
        start_honest(group, tmp_path, port, 1, fit_delay=0.25)
        start_honest(group, tmp_path, port, 2, fit_delay=0.25)
        wait_for(group, "server", rf"^round 2/{rounds} ", 30)
        group.start("flood", [sys.executable, HOSTILE, "idle-flood", "--port", port,
                              "--count", FLOOD_CONNECTIONS, "--hold", 4, "--timeout", 30])
        assert group.wait("flood", 60) == 0, group.dump()
        flood_output = group.output("flood")
        if tagged_lines(flood_output, "FLOOD_SKIP"):
            pytest.skip(tagged_lines(flood_output, "FLOOD_SKIP")[0]["reason"])
        flood = tagged_lines(flood_output, "FLOOD")[0]
        print(f"\nFLOOD: {json.dumps(flood)}", flush=True)
        assert group.procs["server"].poll() is None, f"the server died\n{group.dump()}"
        finish_all(group, timeout=90)
        history = server_result(group)
        assert history["history"]["clients"] == [["honest_1", "honest_2"]] * rounds
        result = tagged_lines(group.output("server"), "RESULT")[-1]
        # Each client may hold two descriptors (its socket, its TensorBoard file) and the
        # server keeps some for itself: at most half the limit goes to connections.
        assert result["max_connections"] <= SERVER_NOFILE // 2, result
        # Everything beyond max_connections was refused and closed, none left hanging.
        assert flood["opened"] >= FLOOD_CONNECTIONS - 50, flood
        assert flood["kept_open"] <= result["max_connections"], flood
        log = group.output("server")
        assert "refusing connection" in log, log[-3000:]
        # Running out of descriptors (if it happens at all) is one line, not one per accept.
        assert log.count("accepting connections paused") <= 3, log[-3000:]
        assert_no_traceback(group)
