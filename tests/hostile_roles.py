"""Process entry points for the hostile-input tests: ``python hostile_roles.py <role> ...``.

Roles:
- ``server``: a numpy SoftmaxRegression(64, 10) FL_Server whose hardening options come from the
  command line. Prints ``READY <port>`` once listening and ``RESULT {json}`` at the end.
- ``honest-client``: an FL_Client on synthetic data (no scikit-learn, starts in milliseconds),
  optionally slowed down by ``--fit-delay`` so a run lasts long enough to poke at.
- ``evil-client``: speaks the protocol by hand (``pyfed.protocol`` + a raw socket), one
  connection per ``--modes`` entry, and answers every FIT with a crafted, invalid reply. Prints
  one ``REJECTED {json}`` line per ERROR the server sends back, ``CLOSED {json}`` when the
  server hangs up, ``FINISHED {json}`` on FINISH.
- ``idle-flood``: opens ``--count`` idle TCP connections (raising its own open-file limit),
  holds them ``--hold`` seconds, and prints ``FLOOD {json}``: how many opened, and how many the
  server closed (refused) meanwhile.

The helpers (``read_frame``, ``wait_closed``...) are also imported by ``test_hostile.py``.
"""

from __future__ import annotations

import argparse
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

from pyfed import protocol
from pyfed.messages import FitResult, Hello, MessageKind

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
                "round_timeout", "wait_timeout", "buffer_pool_size", "min_upload_rate",
                "upload_stall_timeout"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value  # only what the test asked for: a missing feature is a TypeError
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
                  connect_timeout=args.connect_timeout, timeout=args.timeout)
    c.train(epochs=1, batch_size=32)
    print("CLIENT " + json.dumps({"name": c.name, "rounds": c.rounds_trained}), flush=True)


# ---------------------------------------------------------------------------------------------
# evil-client
# ---------------------------------------------------------------------------------------------

_print_lock = threading.Lock()


def emit(tag: str, payload: dict) -> None:
    with _print_lock:
        print(f"{tag} {json.dumps(payload)}", flush=True)


def crafted_result(mode: str, fit, huge_examples: int) -> bytes:
    """The invalid FIT_RESULT frame ``mode`` stands for, answering ``fit``."""
    weights = [np.array(w, dtype=np.float32) for w in fit.weights]
    num_examples = 100
    result_round = fit.round
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


def unsolicited_upload(port: int, mode: str, index: int, args) -> None:
    """HELLO and, before any FIT, a FIT_RESULT declaring ``--declared-body`` bytes (one uint8
    array), then stream the whole body: a server that reads it allocates it."""
    deadline = time.monotonic() + args.timeout
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        emit("FAILED", {"mode": mode, "error": f"connect: {exc}"})
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
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        emit("FAILED", {"mode": mode, "error": f"connect: {exc}"})
        return
    try:
        sock.sendall(protocol.encode_bytes(Hello(client_name=name)))
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
    parser.add_argument("role", choices=["server", "honest-client", "evil-client", "idle-flood"])
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
    parser.add_argument("--extra-bytes", type=int, default=512 << 20)
    # idle-flood
    parser.add_argument("--count", type=int, default=1100)
    parser.add_argument("--hold", type=float, default=4.0)
    args = parser.parse_args()
    {"server": server, "honest-client": honest_client, "evil-client": evil_client,
     "idle-flood": idle_flood}[args.role](args)


if __name__ == "__main__":
    main()
