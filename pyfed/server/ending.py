"""How a run ends: the final model saved and sent to every client (FINISH), or every client told
that the server is going away."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from ..deadline import Deadline, wait_until
from ..errors import StorageError
from ..models import is_keras_model
from .session import FinishJob

logger = logging.getLogger("pyfed")


def complete(server) -> None:
    """Save the final model and send it to the clients. A model that cannot be saved (a full
    disk) fails the run with one line naming the file, after the clients have it."""
    reason = getattr(server, "finish_reason", "completed")  # or why the rounds stopped early
    try:
        save_final_model(server)
    except StorageError:
        send_finish(server, reason)
        raise
    send_finish(server, reason)


def save_final_model(server) -> None:
    """Atomically: write beside the target, then ``os.replace``."""
    keras = is_keras_model(server.curr_model)
    suffix = ".keras" if keras else ".npz"
    target = server.run_dir / ("final.keras" if keras else "final_weights.npz")
    temporary = server.run_dir / f".final-{os.getpid()}{suffix}"
    try:
        if keras:
            server.curr_model.save(temporary)
        else:
            np.savez(temporary, *server.adapter.get_weights())
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StorageError(f"cannot save the final model to {target}: "
                           f"{exc.strerror or exc}") from None
    server.final_model_path = target


def send_finish(server, reason: str) -> None:
    parameters = server.adapter.get_weights()
    sessions = server.gateway.close_to_new_clients()
    for session in sessions:
        session.post(FinishJob(parameters, reason))
    deadline = Deadline(60.0)  # one budget for everybody, not 60 s each
    for session in sessions:
        if not wait_until(session.finished.is_set, deadline, sleep=session.finished.wait):
            logger.warning("%s did not receive FINISH in time", session.name)


def stop_clients(server, reason: str) -> None:
    """Tell every client the server is going away (they may reconnect to a resumed run)."""
    for session in server.gateway.snapshot().values():
        if not session.finished.is_set():  # those that have FINISH need no other word
            session.notify_stop(reason)
