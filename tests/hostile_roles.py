"""Process entry points for the hostile-input tests: ``python hostile_roles.py <role> ...``.

Roles:
- ``server``: a numpy SoftmaxRegression(64, 10) FL_Server whose hardening options come from the
  command line. Prints ``READY <port>`` once listening and ``RESULT {json}`` at the end.
- ``honest-client``: an FL_Client on synthetic data (no scikit-learn, starts in milliseconds),
  optionally slowed down by ``--fit-delay`` so a run lasts long enough to poke at.
- ``evil-client``: speaks the protocol by hand (``pyfed.wire.protocol`` + a raw socket), one
  connection per ``--modes`` entry, and answers every FIT with a crafted, invalid reply. Prints
  one ``REJECTED {json}`` line per ERROR the server sends back, ``CLOSED {json}`` when the
  server hangs up, ``FINISHED {json}`` on FINISH. Modes in ``FIELD_MODES`` send a valid update
  with one crafted header field; ``eval-*`` modes train honestly and answer EVALUATE with a
  crafted result; ``wrong-round`` / ``old-round`` answer for the FIT's round + 7 / - 1;
  ``twice`` sends a valid result twice for one FIT.
- ``evil-server``: a hostile server for one client, by hand too. It welcomes the client to a
  SoftmaxRegression(64, 10) run (so the client needs no TensorFlow), then attacks by
  ``--mode``: ``traversal`` / ``abs-path`` (``--run-name`` is a path), ``bad-weights``
  (``--fault shape|count|dtype|nan|inf``), ``bad-config`` (``--fit-config`` JSON), ``bad-round``
  (FIT for round ``--fit-round``), ``evaluate-without-data``, ``huge-model`` (a model
  description of 40 TiB of weights), ``wrong-id`` (a WELCOME for another client); ``honest``
  plays a correct ``--rounds``-round run. Prints ``READY <port>``, then ``CLIENT_ERROR {json}`` for each ERROR
  the client sends, ``RESULT {json}`` for each FIT_RESULT, ``CLOSED {json}`` at the end.
  server hangs up, ``FINISHED {json}`` on FINISH. With ``--bad-fits N`` only the first N FITs
  get the crafted reply and later ones an honest echo (a transient fault), and every FIT is
  reported as ``FIT {json}`` with a digest of its weights.
- ``idle-flood``: opens ``--count`` idle TCP connections (raising its own open-file limit),
  holds them ``--hold`` seconds, and prints ``FLOOD {json}``: how many opened, and how many the
  server closed (refused) meanwhile.

The helpers (``read_frame``, ``wait_closed``...) are also imported by ``test_hostile.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import errno
import json
import logging
import os
import select
import socket
import sys
import threading
import time

import numpy as np

from pyfed.wire import protocol
from pyfed.wire.messages import (Error, Evaluate, EvaluateResult, Finish, Fit, FitResult, Hello,
                            MessageKind, Welcome)

SHAPES = [(64, 10), (10,)]  # SoftmaxRegression(64, 10)


# ---------------------------------------------------------------------------------------------
# Raw-socket helpers (shared with the tests)
# ---------------------------------------------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    """``n`` bytes, or None if the peer closed first. Raises TimeoutError at ``deadline``."""
    chunks, got = [], 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {n} bytes before the deadline ({got} received)")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except TimeoutError:
            raise TimeoutError(f"no {n} bytes before the deadline ({got} received)") from None
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, deadline: float):
    """One decoded message from the server, or None on a clean EOF at a frame boundary."""
    prefix_bytes = recv_exactly(sock, protocol.PREFIX_SIZE, deadline)
    if prefix_bytes is None:
        return None
    prefix = protocol.parse_prefix(prefix_bytes, protocol.FrameLimits(max_body_bytes=64 << 20))
    rest = recv_exactly(sock, prefix.header_length + prefix.body_length, deadline)
    if rest is None:
        raise ConnectionError("server closed the connection mid-frame")
    return protocol.decode(prefix_bytes + rest, protocol.FrameLimits(max_body_bytes=64 << 20))


def drain_until_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes, float]:
    """Read until the server closes (EOF or reset), for at most ``timeout`` seconds.

    Returns ``(closed, bytes_received, seconds)``; never waits longer than ``timeout``.
    """
    start = time.monotonic()
    deadline = start + timeout
    data = bytearray()
    while len(data) < (8 << 20):  # bounded: a server never owes a stranger megabytes
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, bytes(data), time.monotonic() - start
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False, bytes(data), time.monotonic() - start
        except (ConnectionResetError, BrokenPipeError):
            return True, bytes(data), time.monotonic() - start
        except OSError:
            return True, bytes(data), time.monotonic() - start
        if not chunk:
            return True, bytes(data), time.monotonic() - start
        data += chunk
    return False, bytes(data), time.monotonic() - start


def is_closed_now(sock: socket.socket) -> bool:
    """True if the peer has closed (EOF or reset) -- checked without blocking."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        chunk = sock.recv(65536, socket.MSG_PEEK)
    except (ConnectionResetError, BrokenPipeError, OSError):
        return True
    if not chunk:
        return True
    # Data is waiting (e.g. an ERROR frame): consume it and look again.
    try:
        sock.recv(len(chunk))
    except OSError:
        return True
    return is_closed_now(sock)


def decode_frames(data: bytes) -> list:
    """Every whole frame in ``data`` (raises ProtocolError if something else is there)."""
    frames, view = [], memoryview(data)
    while len(view):
        prefix = protocol.parse_prefix(view[:protocol.PREFIX_SIZE],
                                       protocol.FrameLimits(max_body_bytes=64 << 20))
        end = protocol.PREFIX_SIZE + prefix.header_length + prefix.body_length
        frames.append(protocol.decode(view[:end], protocol.FrameLimits(max_body_bytes=64 << 20)))
        view = view[end:]
    return frames


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------


def server(args) -> None:
    import faulthandler
    import signal

    from pyfed import FL_Server

    # `kill -USR1 <pid>` dumps every thread's stack to the log: how a hung server is diagnosed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from pyfed.models import SoftmaxRegression

    if args.nofile is not None:  # as if started under `ulimit -n N` (soft and hard)
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    options = {}
    for key in ("handshake_timeout", "max_connections", "max_message_bytes", "max_examples",
                "round_timeout", "wait_timeout", "token", "round_retries", "progress_interval",
                "buffer_pool_size", "min_upload_rate", "upload_stall_timeout"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value  # only what the test asked for: a missing feature is a TypeError
    strategy_options = {}
    if args.max_update_norm is not None:
        strategy_options.update(max_update_norm=args.max_update_norm,
                                update_norm_action=args.update_norm_action)
    if args.min_fit_clients is not None:
        strategy_options["min_fit_clients"] = args.min_fit_clients
    if strategy_options:
        from pyfed.strategy import FedAvg

        options["strategy"] = FedAvg(**strategy_options)
    srv = FL_Server(SoftmaxRegression(64, 10), args.clients, args.rounds, port=args.port,
                    logdir=args.logdir, **options)
    srv.start()
    print(f"READY {srv.port}", flush=True)
    history = srv.train()
    pool = srv.gateway.pool
    print("RESULT " + json.dumps({
        "history": history.to_dict(),
        "pool": {"largest": getattr(pool, "largest", None), "peak_in_use": pool.peak_in_use,
                 "size": pool.size},
        "max_connections": srv.gateway.max_connections,
        "memory": own_memory()}), flush=True)


def own_memory() -> dict:
    """This process's VmRSS and VmHWM (peak) in bytes, from /proc."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


# ---------------------------------------------------------------------------------------------
# honest-client
# ---------------------------------------------------------------------------------------------


def honest_client(args) -> None:
    from pyfed import FL_Client
    from pyfed.models import SoftmaxRegression

    if args.fit_delay:
        original = SoftmaxRegression.fit

        def slow_fit(self, data, target, config):
            time.sleep(args.fit_delay)
            return original(self, data, target, config)

        SoftmaxRegression.fit = slow_fit
    rng = np.random.default_rng(args.index)
    x = rng.random((args.examples, 64), dtype=np.float32)
    y = rng.integers(0, 10, args.examples)
    c = FL_Client(f"honest_{args.index}", x, y, server_port=args.port, logdir=args.logdir,
                  connect_timeout=args.connect_timeout, timeout=args.timeout, token=args.token)
    c.train(epochs=1, batch_size=32)
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained}), flush=True)


# ---------------------------------------------------------------------------------------------
# evil-client
# ---------------------------------------------------------------------------------------------

_print_lock = threading.Lock()


def emit(tag: str, payload: dict) -> None:
    with _print_lock:
        print(f"{tag} {json.dumps(payload)}", flush=True)


# A line a hostile peer tries to write into the server's (or client's) log or progress output.
FORGED = "x\nround 9/9 \u00b7 FORGED"

# mode -> FIT_RESULT header fields that replace an otherwise valid update's (legal JSON all).
FIELD_MODES = {
    "metric-overflow": {"metrics": {"accuracy": 10**400}},
    "metric-nan": {"metrics": {"loss": float("nan")}},
    "metric-inf": {"metrics": {"loss": float("-inf")}},
    "metric-huge": {"metrics": {"loss": 1e300}},
    "metric-string": {"metrics": {"loss": "low"}},
    "metric-nested": {"metrics": {"loss": {"a": 1}}},
    "metric-bool": {"metrics": {"accuracy": True}},
    "examples-overflow": {"num_examples": 10**400},
    "examples-bool": {"num_examples": True},
    "examples-float": {"num_examples": 100.0},
    "round-huge-negative": {"round": -10**30},
    "epoch-overflow": {"first_epoch": 10**400},
    "history-nan": {"history": {"loss": [0.5, float("nan")]}},
    "history-not-a-list": {"history": {"loss": 0.5}},
    "history-too-long": {"history": {"loss": [0.5] * 10_001}},
    "many-metric-keys": {"metrics": {f"m{i}": 0.5 for i in range(50_000)}},
    "long-metric-name": {"metrics": {"m" * 10_000: 0.5}},
    "forged-metric-name": {"metrics": {FORGED: 0.5}},
}
# mode -> EVALUATE_RESULT fields (the client trains honestly, then answers EVALUATE with these).
EVAL_MODES = {
    "eval-examples-overflow": {"num_examples": 10**400},
    "eval-loss-overflow": {"loss": 10**400},
    "eval-loss-nan": {"loss": float("nan")},
    "eval-metric-overflow": {"metrics": {"accuracy": 10**400}},
}
def weights_digest(weights) -> str:
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def crafted_result(mode: str, fit, huge_examples: int) -> bytes:
    """The invalid FIT_RESULT frame ``mode`` stands for, answering ``fit``."""
    weights = [np.array(w, dtype=np.float32) for w in fit.weights]
    num_examples = 100
    result_round = fit.round
    if mode in FIELD_MODES:
        fields = {"round": result_round, "num_examples": num_examples, **FIELD_MODES[mode]}
        return protocol.encode_bytes(FitResult(weights=tuple(weights), **fields))
    if mode in EVAL_MODES:
        return protocol.encode_bytes(FitResult(round=result_round, weights=tuple(weights),
                                               num_examples=num_examples, metrics={"loss": 1.0}))
    if mode == "fresh-metric-keys":  # valid, but 64 metric names never seen before, every round
        metrics = {f"r{fit.round}_k{i}": 0.5 for i in range(64)}
        return protocol.encode_bytes(FitResult(round=result_round, weights=tuple(weights),
                                               num_examples=num_examples, metrics=metrics))
    if mode == "huge-delta":  # finite and within every value bound, but far from the global model
        weights = [w + 1000.0 for w in weights]
        return protocol.encode_bytes(FitResult(round=result_round, weights=tuple(weights),
                                               num_examples=num_examples))
    if mode == "forged-error":  # a non-fatal ERROR whose reason tries to write a log line
        return protocol.encode_bytes(Error(reason=FORGED, code="client_error", fatal=False))
    if mode == "nan":
        weights[0][0, 0] = np.nan
    elif mode == "inf":
        weights[1][3] = np.inf
    elif mode == "huge":  # finite, but would overflow a float32 sum
        weights[0][5, 2] = -3e38
    elif mode == "wrong-shape":
        weights[0] = weights[0][:-1]  # (63, 10) instead of (64, 10)
    elif mode == "wrong-dtype":
        weights[0] = weights[0].astype(np.float64)
    elif mode == "missing-tensor":
        weights = weights[:1]
    elif mode == "zero-examples":
        num_examples = 0
    elif mode == "negative-examples":
        num_examples = -5
    elif mode == "huge-examples":
        num_examples = huge_examples
    elif mode == "wrong-round":
        result_round = fit.round + 7
    elif mode == "old-round":  # the round before the FIT's: for round 1, round 0 never existed
        result_round = fit.round - 1
    elif mode == "twice":  # a valid result, sent twice for the one FIT
        return 2 * protocol.encode_bytes(FitResult(round=result_round, weights=tuple(weights),
                                                   num_examples=num_examples))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return protocol.encode_bytes(FitResult(round=result_round, weights=tuple(weights),
                                           num_examples=num_examples))


MODEL_BODY = 2560 + 40  # SoftmaxRegression(64, 10) as a FIT_RESULT body: [64, 10] and [10] float32


def fit_result_header(result_round: int, arrays: list[tuple[str, list, int]]) -> tuple[bytes, int]:
    """Prefix + header of a FIT_RESULT whose arrays are (dtype, shape, nbytes), packed as the
    protocol packs them; returns the bytes and the body length. Nothing of the body is built,
    so a frame can declare (and stream) a body far bigger than this process's memory."""
    descriptors, offset = [], 0
    for dtype, shape, nbytes in arrays:
        start = (offset + protocol.ALIGNMENT - 1) // protocol.ALIGNMENT * protocol.ALIGNMENT
        descriptors.append({"dtype": dtype, "shape": shape, "offset": start, "nbytes": nbytes})
        offset = start + nbytes
    header = json.dumps({"fields": {"round": result_round, "num_examples": 100},
                         "arrays": descriptors}, separators=(",", ":")).encode()
    prefix = protocol.PREFIX.pack(protocol.MAGIC, protocol.VERSION, MessageKind.FIT_RESULT, 0,
                                  len(header), offset)
    return prefix + header, offset


def send_zeros(sock: socket.socket, nbytes: int, deadline: float) -> tuple[int, str | None]:
    """Stream ``nbytes`` zero bytes from one 1 MiB chunk; stops at the first send error (the
    server hung up) or the deadline. Returns (bytes sent, the error's name or None)."""
    chunk = memoryview(bytes(1 << 20))
    sent = 0
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    while sent < nbytes and time.monotonic() < deadline:  # bounded by bytes and time
        try:
            sent += sock.send(chunk[:min(len(chunk), nbytes - sent)])
        except OSError as exc:
            return sent, type(exc).__name__
    return sent, None


def slow_upload(sock: socket.socket, mode: str, fit, deadline: float) -> None:
    """Begin a valid FIT_RESULT (prefix, header, ~100 body bytes), then stall or dribble one
    byte a second, until the server hangs up or the deadline."""
    frame = protocol.encode_bytes(FitResult(round=fit.round, num_examples=100, weights=tuple(
        np.zeros(shape, dtype=np.float32) for shape in SHAPES)))
    body_start = len(frame) - MODEL_BODY
    sent = body_start + 100
    started = time.monotonic()
    sock.sendall(frame[:sent])
    emit("STARTED_UPLOAD", {"mode": mode, "round": fit.round})
    closed = False
    while time.monotonic() < deadline and not closed:  # bounded by the deadline
        if mode == "dribble" and sent < len(frame) - 1:  # never the last byte
            try:
                sock.sendall(frame[sent:sent + 1])
                sent += 1
            except OSError:
                closed = True
                break
        closed, _, _ = drain_until_closed(sock, min(1.0, max(0.05, deadline - time.monotonic())))
    emit("CLOSED" if closed else "NOT_CLOSED",
         {"mode": mode, "seconds": round(time.monotonic() - started, 2),
          "body_bytes_sent": sent - body_start})


def connect_or_report(port: int, mode: str) -> socket.socket | None:
    """A connection to the server, or None after a ``FAILED`` line the test can read."""
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        emit("FAILED", {"mode": mode, "error": f"connect: {exc}"})
        return None


def unsolicited_upload(port: int, mode: str, index: int, args) -> None:
    """HELLO and, before any FIT, a FIT_RESULT declaring ``--declared-body`` bytes (one uint8
    array), then stream the whole body: a server that reads it allocates it."""
    deadline = time.monotonic() + args.timeout
    sock = connect_or_report(port, mode)
    if sock is None:
        return
    try:
        head, body_length = fit_result_header(1, [("|u1", [args.declared_body], args.declared_body)])
        sock.sendall(protocol.encode_bytes(Hello(client_name=f"evil_{mode}_{index}")) + head)
        sent, error = send_zeros(sock, body_length, deadline)
        closed, _, _ = drain_until_closed(sock, max(0.1, deadline - time.monotonic()))
        emit("CLOSED" if closed or error else "NOT_CLOSED",
             {"mode": mode, "index": index, "body_bytes_sent": sent, "send_error": error})
    except Exception as exc:  # noqa: BLE001  (report, never hang: the test reads these lines)
        emit("FAILED", {"mode": mode, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        sock.close()


def extra_array_upload(sock: socket.socket, mode: str, fit, extra: int, deadline: float) -> None:
    """Answer FIT with the model's arrays plus one extra ``extra``-byte array, streamed whole;
    then report what the server said."""
    arrays = [("<f4", [64, 10], 2560), ("<f4", [10], 40), ("|u1", [extra], extra)]
    head, body_length = fit_result_header(fit.round, arrays)
    sock.sendall(head)
    sent, error = send_zeros(sock, body_length, deadline)
    emit("UPLOADED", {"mode": mode, "body_bytes_sent": sent, "send_error": error})


def evil_session(port: int, mode: str, args, index: int = 0) -> None:
    if mode == "unsolicited-huge":
        return unsolicited_upload(port, mode, index, args)
    name = f"evil_{mode}" if index == 0 else f"evil_{mode}_{index}"
    deadline = time.monotonic() + args.timeout
    sock = connect_or_report(port, mode)
    if sock is None:
        return
    try:
        sock.sendall(protocol.encode_bytes(Hello(client_name=name, evaluates=mode in EVAL_MODES)))
        welcome = read_frame(sock, deadline)
        if welcome is None or welcome.KIND is not MessageKind.WELCOME:
            emit("FAILED", {"mode": mode, "error": f"no WELCOME: {welcome!r}"})
            return
        if mode == "second-hello":
            sock.sendall(protocol.encode_bytes(Hello(client_name=name)))
        elif mode == "early-result":  # a FIT_RESULT while READY: no FIT was ever sent
            weights = tuple(np.zeros(s, dtype=np.float32) for s in SHAPES)
            sock.sendall(protocol.encode_bytes(FitResult(round=1, weights=weights,
                                                         num_examples=100)))
        elif mode == "leave":  # welcomed, then gone while idle
            emit("WELCOMED", {"mode": mode})
            return
        elif mode == "garbage-after-welcome":
            sock.sendall(os.urandom(64))
        emit("WELCOMED", {"mode": mode})
        rounds_seen = 0
        while time.monotonic() < deadline and rounds_seen < 1000:
            try:
                message = read_frame(sock, deadline)
            except (ConnectionError, OSError) as exc:  # reset by the server
                emit("CLOSED", {"mode": mode, "how": type(exc).__name__})
                return
            if message is None:
                emit("CLOSED", {"mode": mode, "how": "eof"})
                return
            kind = message.KIND
            if kind is MessageKind.FIT:
                rounds_seen += 1
                if args.bad_fits is not None:
                    # Only the first --bad-fits FITs get the crafted reply; later ones an honest
                    # echo of the weights (a transient fault). Each FIT's weights are reported.
                    emit("FIT", {"mode": mode, "round": message.round,
                                 "weights": weights_digest(message.weights)})
                    if rounds_seen > args.bad_fits:
                        sock.sendall(protocol.encode_bytes(FitResult(
                            round=message.round, num_examples=100,
                            weights=tuple(np.array(w, dtype=np.float32) for w in message.weights))))
                        continue
                if mode in ("second-hello", "garbage-after-welcome"):
                    # A server that reads a client only after sending it FIT finds our illegal
                    # bytes now: answer nothing and wait for it to hang up.
                    emit("GOT_FIT", {"mode": mode, "round": message.round})
                    continue
                if mode == "silent":  # never answers: the round waits on us
                    emit("GOT_FIT", {"mode": mode, "round": message.round})
                    continue
                if mode in ("stall", "dribble"):
                    slow_upload(sock, mode, message, deadline)
                    return
                if mode == "extra-array":
                    extra_array_upload(sock, mode, message, args.extra_bytes, deadline)
                    continue  # the server's answer (an ERROR, then a close) comes next
                if mode == "early-result":
                    # Our FIT_RESULT went first, so this FIT means the server took it for the
                    # answer: say so and leave (staying silent would only stall later rounds).
                    emit("GOT_FIT", {"mode": mode, "round": message.round})
                    return
                if mode == "oversize-body":
                    header = json.dumps({"fields": {"round": message.round, "num_examples": 1},
                                         "arrays": []}).encode()
                    sock.sendall(protocol.PREFIX.pack(protocol.MAGIC, protocol.VERSION,
                                                      MessageKind.FIT_RESULT, 0, len(header),
                                                      args.declared_body) + header)
                    started = time.monotonic()
                    closed, data, _ = drain_until_closed(sock, max(0.1, deadline - started))
                    emit("CLOSED" if closed else "NOT_CLOSED",
                         {"mode": mode, "seconds": round(time.monotonic() - started, 3),
                          "bytes": len(data)})
                    return
                sock.sendall(crafted_result(mode, message, args.huge_examples))
            elif kind is MessageKind.EVALUATE and mode in EVAL_MODES:
                fields = {"round": message.round, "num_examples": 100, "loss": 1.0,
                          **EVAL_MODES[mode]}
                sock.sendall(protocol.encode_bytes(EvaluateResult(**fields)))
            elif kind is MessageKind.ERROR:
                emit("REJECTED", {"mode": mode, "code": message.code, "fatal": message.fatal,
                                  "reason": message.reason})
                if message.fatal:
                    return
            elif kind is MessageKind.FINISH:
                emit("FINISHED", {"mode": mode, "reason": message.reason})
                return
            else:
                emit("UNEXPECTED", {"mode": mode, "kind": kind.name})
        emit("TIMEOUT", {"mode": mode})
    except Exception as exc:  # noqa: BLE001  (report, never hang: the test reads these lines)
        emit("FAILED", {"mode": mode, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        sock.close()


def evil_client(args) -> None:
    modes = args.modes.split(",")
    # Connections of the same mode get distinct names (a name's new connection replaces its old).
    threads = [threading.Thread(target=evil_session,
                                args=(args.port, mode, args, modes[:i].count(mode)), daemon=True)
               for i, mode in enumerate(modes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.timeout + 5)


# ---------------------------------------------------------------------------------------------
# evil-server
# ---------------------------------------------------------------------------------------------


def _evil_weights(fault: str, weights: list) -> list:
    weights = [np.array(w) for w in weights]
    if fault == "shape":
        weights[0] = weights[0][:-1]  # (63, 10) instead of (64, 10)
    elif fault == "count":
        weights = weights[:1]
    elif fault == "dtype":
        weights[0] = weights[0].astype(np.float64)
    elif fault == "nan":
        weights[0][3, 4] = np.nan
    elif fault == "inf":
        weights[1][2] = -np.inf
    elif fault != "none":
        raise ValueError(f"unknown fault {fault!r}")
    return weights


def evil_server(args) -> None:
    import uuid

    from pyfed.models import SoftmaxRegression
    from pyfed.wire.spec import spec_hash, spec_to_json

    model = SoftmaxRegression(64, 10)
    spec = model.spec()
    listener = socket.create_server(("127.0.0.1", args.port))
    print(f"READY {listener.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + args.timeout
    listener.settimeout(args.timeout)
    sock, _ = listener.accept()
    listener.close()
    try:
        hello = read_frame(sock, deadline)
        assert hello is not None and hello.KIND is MessageKind.HELLO, hello
        run_name = args.run_name if args.mode in ("traversal", "abs-path") else "exp 1: evil"
        description = model.describe()
        if args.mode == "huge-model":  # 2**40 x 10 float32: 40 TiB, were it allocated
            description["n_features"] = 1 << 40
        # wrong-id: a WELCOME for another client (as if this server welcomed someone else)
        client_id = "someone-else" if args.mode == "wrong-id" else hello.client_name
        sock.sendall(protocol.encode_bytes(Welcome(
            client_id=client_id, rounds=args.rounds, run_name=run_name,
            run_id=uuid.uuid4().hex, model=description, spec_hash=spec_hash(spec),
            config={"spec": spec_to_json(spec), "compression": "none"})))
        config = json.loads(args.fit_config) if args.mode == "bad-config" else {"epochs": 1}
        fault = args.fault if args.mode == "bad-weights" else "none"
        first_round = args.fit_round if args.mode == "bad-round" else 1
        if args.mode == "evaluate-without-data":
            sock.sendall(protocol.encode_bytes(Evaluate(round=1, weights=tuple(model.weights))))
        else:
            sock.sendall(protocol.encode_bytes(Fit(
                round=first_round, weights=tuple(_evil_weights(fault, model.weights)),
                config=config)))
        server_round = first_round
        while time.monotonic() < deadline:
            try:
                message = read_frame(sock, deadline)
            except (ConnectionError, OSError) as exc:
                emit("CLOSED", {"how": type(exc).__name__})
                return
            if message is None:
                emit("CLOSED", {"how": "eof"})
                return
            if message.KIND is MessageKind.ERROR:
                emit("CLIENT_ERROR", {"code": message.code, "reason": message.reason})
            elif message.KIND is MessageKind.FIT_RESULT:
                emit("RESULT", {"round": message.round, "num_examples": message.num_examples})
                if server_round >= args.rounds:
                    sock.sendall(protocol.encode_bytes(Finish(weights=tuple(model.weights))))
                else:
                    server_round += 1
                    sock.sendall(protocol.encode_bytes(Fit(
                        round=server_round, weights=tuple(model.weights), config={"epochs": 1})))
            else:
                emit("UNEXPECTED", {"kind": message.KIND.name})
        emit("TIMEOUT", {})
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# idle-flood
# ---------------------------------------------------------------------------------------------


def closed_by_peer(sock: socket.socket) -> bool:
    """Has the server closed this connection (EOF or reset, after any ERROR frame)? poll, not
    select: these descriptors are above select's 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    for _ in range(4):  # an ERROR frame, then EOF
        if not poller.poll(0):
            return False
        try:
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True
    return False


def idle_flood(args) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.count + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            emit("FLOOD_SKIP", {"reason": f"open-file hard limit {hard} < {need}"})
            return
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    sockets, failed = [], {}
    deadline = time.monotonic() + args.timeout
    try:
        for _ in range(args.count):  # bounded by count and time
            if time.monotonic() > deadline:
                break
            try:
                sockets.append(socket.create_connection(("127.0.0.1", args.port), timeout=5))
            except OSError as exc:
                key = errno.errorcode.get(exc.errno, type(exc).__name__)
                failed[key] = failed.get(key, 0) + 1
        emit("FLOOD_OPEN", {"opened": len(sockets), "failed": failed})
        time.sleep(args.hold)
        closed = sum(closed_by_peer(s) for s in sockets)
        emit("FLOOD", {"opened": len(sockets), "failed": failed, "closed_by_server": closed,
                       "kept_open": len(sockets) - closed})
    finally:
        for s in sockets:
            s.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "honest-client", "evil-client", "evil-server",
                                         "idle-flood"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--logdir", default="pyfed_logs")
    parser.add_argument("--handshake-timeout", type=float, default=None)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--max-message-bytes", type=int, default=None)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--round-timeout", type=float, default=None)
    parser.add_argument("--wait-timeout", type=float, default=None)
    parser.add_argument("--token", default=None)
    parser.add_argument("--max-update-norm", type=float, default=None)
    parser.add_argument("--update-norm-action", default="clip")
    parser.add_argument("--round-retries", type=int, default=None)
    parser.add_argument("--progress-interval", type=float, default=None)
    parser.add_argument("--min-fit-clients", type=int, default=None)
    parser.add_argument("--buffer-pool-size", type=int, default=None)
    parser.add_argument("--min-upload-rate", type=float, default=None)
    parser.add_argument("--upload-stall-timeout", type=float, default=None)
    parser.add_argument("--nofile", type=int, default=None, help="RLIMIT_NOFILE for the server")
    # honest-client
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--fit-delay", type=float, default=0.0)
    parser.add_argument("--connect-timeout", type=float, default=30)
    # evil-client
    parser.add_argument("--modes", default="nan")
    parser.add_argument("--huge-examples", type=int, default=10**12)
    parser.add_argument("--declared-body", type=int, default=1 << 40)
    parser.add_argument("--timeout", type=float, default=60)
    # evil-server
    parser.add_argument("--mode", default="honest",
                        choices=["honest", "traversal", "abs-path", "bad-weights", "bad-config",
                                 "bad-round", "evaluate-without-data", "huge-model",
                                 "wrong-id"])
    parser.add_argument("--run-name", default="../../escaped")
    parser.add_argument("--fault", default="shape")
    parser.add_argument("--fit-config", default="{}")
    parser.add_argument("--fit-round", type=int, default=1)
    parser.add_argument("--bad-fits", type=int, default=None,
                        help="craft only the first N replies; echo the weights afterwards")
    parser.add_argument("--extra-bytes", type=int, default=512 << 20)
    # idle-flood
    parser.add_argument("--count", type=int, default=1100)
    parser.add_argument("--hold", type=float, default=4.0)
    args = parser.parse_args()
    {"server": server, "honest-client": honest_client, "evil-client": evil_client,
     "evil-server": evil_server, "idle-flood": idle_flood}[args.role](args)


if __name__ == "__main__":
    main()
