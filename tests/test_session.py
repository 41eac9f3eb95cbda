"""pyfed.server.session.ClientSession over an in-memory pair: ``socket.socketpair()`` with a
server Channel on one end and a client Channel on the other, past the handshake (HELLO and
WELCOME exchanged as the gateway and the client do). The session's ``serve()`` runs on its own
thread, as on the server; the test plays the client on the other end."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest

from pyfed.errors import ConnectionClosed, ProtocolError, PyFedError
from pyfed.models import NumpyModel
from pyfed.server.collect import EvaluateCollector, FitCollector
from pyfed.server.session import ClientSession, FinishJob, RequestJob
from pyfed.strategy import FedAvg
from pyfed.wire import protocol
from pyfed.wire.compression import wire_layout
from pyfed.wire.layout import LayoutMismatch
from pyfed.wire.messages import (Error, Evaluate, EvaluateResult, Finish, Fit, FitResult, Hello,
                                 Ping, Welcome)
from pyfed.wire.protocol import Role, State
from pyfed.wire.transport import BufferPool, Channel
from wire_helpers import frame_nbytes

IO_TIMEOUT = 10.0    # bound on every blocking socket operation and wait in this file
JOIN_TIMEOUT = 15.0  # bound on every thread join
NAME = "c1"


def global_weights():
    return NumpyModel([np.full((3, 2), 0.5, np.float32), np.zeros(2, np.float32)]).get_weights()


def weights_of(value, dtype=np.float32):
    return tuple(np.full(w.shape, value, dtype) for w in global_weights())


def deadline_in(seconds: float) -> float:
    """A RequestJob's deadline ``seconds`` from now."""
    return time.monotonic() + seconds


@pytest.fixture
def pair():
    """(server Channel, client Channel) over a socketpair, both READY (handshake done)."""
    server_sock, client_sock = socket.socketpair()
    server = Channel(server_sock, Role.SERVER, peer=f"{NAME}'s end")
    client = Channel(client_sock, Role.CLIENT, peer="the server's end")
    try:
        client.send(Hello(client_name=NAME), timeout=IO_TIMEOUT)
        assert isinstance(server.receive(timeout=IO_TIMEOUT), Hello)
        server.send(Welcome(client_id=NAME, rounds=3, run_name="run", run_id="id"),
                    timeout=IO_TIMEOUT)
        assert isinstance(client.receive(timeout=IO_TIMEOUT), Welcome)
        assert server.conversation.state is client.conversation.state is State.READY
        yield server, client
    finally:
        server.close()
        client.close()


class Serving:
    """``session.serve()`` on a thread; ``outcome()`` joins it (bounded) and returns the
    exception it ended with (None: it returned)."""

    def __init__(self, session: ClientSession):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(session,), name="session")

    def _run(self, session):
        try:
            session.serve()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def outcome(self) -> BaseException | None:
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive(), "the session's thread did not finish in time"
        return self.error


@contextlib.contextmanager
def serving(session: ClientSession, *channels: Channel):
    """Run the session; always join its thread. If the test body fails, close the channels
    first so a thread blocked on its socket wakes up."""
    served = Serving(session)
    served.thread.start()
    try:
        yield served
    except BaseException:
        for channel in channels:
            channel.close()
        raise
    finally:
        served.outcome()


def fit_job(clients=(NAME,), server_round=1, seconds=IO_TIMEOUT):
    """(RequestJob for a FIT, its collector, its strategy), begun as the server begins a round."""
    strategy = FedAvg()
    weights = global_weights()
    strategy.configure_fit(server_round, weights, list(clients))
    strategy.begin(server_round, weights)
    spec = NumpyModel(weights).spec()
    collector = FitCollector(server_round, set(clients), strategy, spec, 1000)
    job = RequestJob(collector, Fit(round=server_round, weights=tuple(weights)),
                     deadline=deadline_in(seconds))
    return job, collector, strategy


def answer_fit(client: Channel, value, num_examples=10) -> Fit:
    fit = client.receive(timeout=IO_TIMEOUT)
    assert isinstance(fit, Fit)
    client.send(FitResult(round=fit.round, weights=weights_of(value), num_examples=num_examples),
                timeout=IO_TIMEOUT)
    return fit


def finish(session: ClientSession, client: Channel) -> Finish:
    session.post(FinishJob(weights=list(weights_of(9.0)), reason="completed"))
    message = client.receive(timeout=IO_TIMEOUT)
    assert isinstance(message, Finish) and message.reason == "completed"
    assert all(np.array_equal(a, b) for a, b in zip(message.weights, weights_of(9.0)))
    return message


def frame_size(message) -> int:
    return frame_nbytes(protocol.encode(message))


# ---------------------------------------------------------------------------------------------
# A round's job, FINISH, and the pool
# ---------------------------------------------------------------------------------------------


def test_a_fit_job_is_answered_folded_and_its_buffer_returned_then_finish_ends_it(pair):
    server, client = pair
    pool = BufferPool(1)
    session = ClientSession(NAME, server, pool)
    assert session.idle and session.alive and session.address == f"{NAME}'s end"
    job, collector, strategy = fit_job()
    session.post(job)
    assert not session.idle  # a job is queued
    with serving(session, server, client) as served:
        fit = client.receive(timeout=IO_TIMEOUT)
        assert isinstance(fit, Fit) and fit.round == 1
        assert all(np.array_equal(a, b) for a, b in zip(fit.weights, global_weights()))
        assert not session.idle  # FIT sent, no reply yet: busy
        reply = FitResult(round=1, weights=weights_of(2.5), num_examples=7)
        client.send(reply, timeout=IO_TIMEOUT)
        collector.wait(timeout=IO_TIMEOUT)
        assert collector.answered == [NAME] and collector.failures == {}
        assert session.idle  # free for the next round as soon as the reply was folded
        finish(session, client)
    assert served.outcome() is None and session.finished.is_set()
    assert pool.in_use == 0 and pool.peak_in_use == 1  # the reply's buffer, given back
    assert (collector.bytes_out, collector.bytes_in) == (frame_size(fit), frame_size(reply))
    assert client.conversation.state is State.CLOSED
    weights, _ = strategy.finish()
    assert all(np.allclose(w, 2.5) for w in weights)


def test_an_evaluate_job_keeps_the_result(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1), evaluates=True)
    collector = EvaluateCollector(2, {NAME})
    session.post(RequestJob(collector, Evaluate(round=2, weights=tuple(global_weights())),
                            deadline=deadline_in(IO_TIMEOUT)))
    with serving(session, server, client) as served:
        request = client.receive(timeout=IO_TIMEOUT)
        assert isinstance(request, Evaluate) and request.round == 2
        client.send(EvaluateResult(round=2, num_examples=12, loss=0.75,
                                   metrics={"accuracy": 0.5}), timeout=IO_TIMEOUT)
        collector.wait(timeout=IO_TIMEOUT)
        finish(session, client)
    assert served.outcome() is None
    assert [(r.client, r.num_examples, r.loss, r.metrics) for r in collector.results] == [
        (NAME, 12, 0.75, {"accuracy": 0.5})]


def test_jobs_run_in_order_round_after_round(pair):
    server, client = pair
    pool = BufferPool(1)
    session = ClientSession(NAME, server, pool)
    jobs = [fit_job(server_round=r) for r in (1, 2, 3)]
    for job, _, _ in jobs:
        session.post(job)
    with serving(session, server, client) as served:
        rounds = [answer_fit(client, float(r), num_examples=r).round for r in (1, 2, 3)]
        for _, collector, _ in jobs:
            collector.wait(timeout=IO_TIMEOUT)
        finish(session, client)
    assert served.outcome() is None and rounds == [1, 2, 3]
    for r, (_, collector, strategy) in zip((1, 2, 3), jobs):
        assert collector.answered == [NAME]
        assert all(np.allclose(w, float(r)) for w in strategy.finish()[0])
    assert pool.in_use == 0 and pool.peak_in_use == 1  # one buffer served every round


def test_a_job_whose_round_closed_while_it_waited_is_not_sent(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    job, collector, _ = fit_job()
    collector.close("the round is over")
    session.post(job)
    with serving(session, server, client) as served:
        finish(session, client)  # the first message the client sees is FINISH, not FIT
    assert served.outcome() is None
    assert collector.failures == {NAME: "the round is over"} and collector.answered == []


# ---------------------------------------------------------------------------------------------
# Ending: end(), a stop notice, a hang-up
# ---------------------------------------------------------------------------------------------


def test_end_fails_every_queued_job_and_later_posts_and_serve_returns(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    first, first_collector, _ = fit_job()
    evaluation = EvaluateCollector(1, {NAME})
    session.post(first)
    session.post(RequestJob(evaluation, Evaluate(round=1, weights=tuple(global_weights())),
                            deadline=deadline_in(IO_TIMEOUT)))
    session.end("the server is shutting down")
    assert not session.alive and not session.idle and session.finished.is_set()
    assert first_collector.failures == {NAME: "the server is shutting down"}
    assert evaluation.failures == {NAME: "the server is shutting down"}
    late, late_collector, _ = fit_job()
    session.post(late)  # nobody would run it
    assert late_collector.failures == {NAME: "disconnected"}
    with serving(session, server, client) as served:
        pass
    assert served.outcome() is None
    server.close()
    with pytest.raises(ConnectionClosed):  # nothing was sent before the hang-up
        client.receive(timeout=IO_TIMEOUT)


def test_a_stop_notice_reaches_the_client_while_the_session_waits_for_its_reply(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    job, collector, _ = fit_job()
    session.post(job)
    with serving(session, server, client) as served:
        assert isinstance(client.receive(timeout=IO_TIMEOUT), Fit)
        session.notify_stop("the server is stopping")  # from another thread, out of band
        notice = client.receive(timeout=IO_TIMEOUT)
    assert isinstance(notice, Error) and notice.code == "server_stopped"
    assert notice.reason == "the server is stopping"
    assert isinstance(served.outcome(), PyFedError)  # its socket was closed under it
    assert NAME in collector.failures and collector.answered == []
    assert not session.alive


def test_a_client_hanging_up_between_jobs_ends_the_session(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    client.close()
    assert not session.idle  # the hang-up is waiting on the socket
    with serving(session, server) as served:
        pass
    assert isinstance(served.outcome(), ConnectionClosed)


# ---------------------------------------------------------------------------------------------
# What the client sends between jobs
# ---------------------------------------------------------------------------------------------


def test_an_unsolicited_result_between_jobs_ends_the_session(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    # The client's own state table would refuse to send it: the bytes go out raw.
    client.sock.sendall(protocol.encode_bytes(FitResult(round=1, weights=weights_of(1.0),
                                                        num_examples=1)))
    assert not session.idle  # something nobody asked for waits on the socket
    with serving(session, server, client) as served:
        pass
    error = served.outcome()
    assert isinstance(error, ProtocolError)
    assert "received FIT_RESULT from the client in state READY" in str(error)


def test_an_error_between_jobs_ends_the_session_with_its_reason(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    client.send(Error(reason="I give up\nforged line", code="client_error"), timeout=IO_TIMEOUT)
    with serving(session, server, client) as served:
        pass
    error = served.outcome()
    assert type(error) is PyFedError
    assert str(error) == f"{NAME} ended the session: I give up\\nforged line"


def test_a_ping_between_jobs_is_read_and_the_session_goes_on(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    with serving(session, server, client) as served:
        client.send(Ping(), timeout=IO_TIMEOUT)
        deadline = deadline_in(IO_TIMEOUT)
        while not session.idle:  # idle again once the session has read the PING
            assert time.monotonic() < deadline, "the PING was never read"
            time.sleep(0.01)
        job, collector, _ = fit_job()
        session.post(job)
        answer_fit(client, 3.0)
        collector.wait(timeout=IO_TIMEOUT)
        assert collector.answered == [NAME]
        finish(session, client)
    assert served.outcome() is None


# ---------------------------------------------------------------------------------------------
# Replies that do not count
# ---------------------------------------------------------------------------------------------


def test_a_non_fatal_error_reply_is_a_failure_and_the_session_goes_on(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    failed, failed_collector, _ = fit_job(server_round=1)
    counted, counted_collector, _ = fit_job(server_round=2)
    session.post(failed)
    session.post(counted)
    with serving(session, server, client) as served:
        assert isinstance(client.receive(timeout=IO_TIMEOUT), Fit)
        client.send(Error(reason="out of memory", code="client_error", fatal=False),
                    timeout=IO_TIMEOUT)
        answer_fit(client, 4.0)  # round 2's FIT comes: the session went on
        counted_collector.wait(timeout=IO_TIMEOUT)
        finish(session, client)
    assert served.outcome() is None
    assert failed_collector.failures == {NAME: "client reported: out of memory"}
    assert counted_collector.answered == [NAME]


def test_a_fatal_error_reply_fails_the_job_and_ends_the_session(pair):
    server, client = pair
    session = ClientSession(NAME, server, BufferPool(1))
    job, collector, _ = fit_job()
    session.post(job)
    with serving(session, server, client) as served:
        assert isinstance(client.receive(timeout=IO_TIMEOUT), Fit)
        client.send(Error(reason="training crashed", code="client_error"), timeout=IO_TIMEOUT)
    error = served.outcome()
    assert type(error) is PyFedError and str(error) == f"{NAME} ended the session: training crashed"
    assert collector.failures == {NAME: "client reported: training crashed"}


def test_a_rejected_update_is_answered_with_a_non_fatal_error_and_its_buffer_returned(pair):
    server, client = pair
    pool = BufferPool(1)
    session = ClientSession(NAME, server, pool)
    job, collector, _ = fit_job()
    session.post(job)
    with serving(session, server, client) as served:
        assert isinstance(client.receive(timeout=IO_TIMEOUT), Fit)
        weights = weights_of(1.0)
        weights[0][2, 1] = np.nan
        client.send(FitResult(round=1, weights=weights, num_examples=5), timeout=IO_TIMEOUT)
        refusal = client.receive(timeout=IO_TIMEOUT)
        assert isinstance(refusal, Error) and not refusal.fatal
        assert refusal.code == "update_rejected"
        assert refusal.reason.startswith("update rejected: tensor 0 (weight_0) contains NaN")
        assert client.conversation.state is State.READY
        finish(session, client)  # the session went on
    assert served.outcome() is None
    assert collector.failures[NAME].startswith("update rejected: tensor 0 (weight_0) contains NaN")
    assert pool.in_use == 0 and pool.peak_in_use == 1


def test_a_result_whose_arrays_are_not_the_models_is_refused_before_a_buffer_is_taken(pair):
    server, client = pair
    pool = BufferPool(1)
    spec = NumpyModel(global_weights()).spec()
    session = ClientSession(NAME, server, pool, layout=wire_layout(None, spec))
    job, collector, _ = fit_job()
    session.post(job)
    with serving(session, server, client) as served:
        assert isinstance(client.receive(timeout=IO_TIMEOUT), Fit)
        wrong = (np.zeros((3, 2), np.float32), np.zeros(5, np.float32))
        client.send(FitResult(round=1, weights=wrong, num_examples=5), timeout=IO_TIMEOUT)
        refusal = client.receive(timeout=IO_TIMEOUT)
    assert isinstance(refusal, Error) and refusal.fatal and refusal.code == "update_rejected"
    assert "tensor 1 (weight_1) has shape [5]; expected shape [2]" in refusal.reason
    assert isinstance(served.outcome(), LayoutMismatch)
    assert "expected shape [2]" in collector.failures[NAME]
    assert pool.peak_in_use == 0  # refused on its header: no buffer was ever leased


def test_a_reply_with_no_buffer_free_by_the_deadline_is_dropped_and_the_session_goes_on(pair):
    server, client = pair
    pool = BufferPool(1)
    held = pool.acquire(64)  # another client's update holds the only buffer
    session = ClientSession(NAME, server, pool)
    job, collector, strategy = fit_job(seconds=0.5)
    session.post(job)
    try:
        with serving(session, server, client) as served:
            answer_fit(client, 7.0)
            refusal = client.receive(timeout=IO_TIMEOUT)
            assert isinstance(refusal, Error) and not refusal.fatal
            assert refusal.reason == "update rejected: arrived after round 1 closed; not counted"
            assert pool.in_use == 1  # only the buffer held here
            finish(session, client)
        assert served.outcome() is None
    finally:
        pool.release(held)
    assert collector.failures == {NAME: "arrived after round 1 closed; not counted"}
    assert collector.answered == [] and collector.bytes_in > 0
    with pytest.raises(RuntimeError, match="has no results"):  # nothing was folded
        strategy.finish()


def test_the_session_honours_the_rounds_deadline_on_its_own_and_still_reads_a_late_reply(pair):
    """The round's Deadline travels with the job to the session's socket wait: with nobody
    closing the round, the client that has not begun to answer by then is failed at that
    instant by its own session; its late reply is then read without a buffer and refused,
    and the session (the client's connection) goes on."""
    server, client = pair
    pool = BufferPool(1)
    session = ClientSession(NAME, server, pool)
    job, collector, _ = fit_job(seconds=0.5)
    session.post(job)
    with serving(session, server, client) as served:
        fit = client.receive(timeout=IO_TIMEOUT)
        # Nobody calls collector.close(): the session alone notices the deadline.
        assert collector.wait(timeout=IO_TIMEOUT, mark_missing=False)
        assert collector.failures == {NAME: "no answer within the round's 0.5 s deadline"}
        assert not collector.closed and not collector.answered
        client.send(FitResult(round=fit.round, weights=weights_of(1.0), num_examples=5),
                    timeout=IO_TIMEOUT)
        refused = client.receive(timeout=IO_TIMEOUT)
        assert isinstance(refused, Error) and not refused.fatal
        assert "arrived after round 1 closed" in refused.reason
        assert pool.peak_in_use == 0  # the late body never held a pool buffer
        finish(session, client)
    assert served.outcome() is None and session.finished.is_set()
