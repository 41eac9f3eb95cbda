"""Where a run lives: a new numbered folder, or (``resume=True``) the folder and checkpoint of
the run it continues."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError, StorageError
from ..tracking.logs import new_run_dir
from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint


@dataclass
class RunFolder:
    path: Path
    created: bool     # made now: a run that never starts removes it again
    continued: bool   # an earlier run's folder: TensorBoard drops its points past the checkpoint


def load_resume_checkpoint(server) -> tuple[Checkpoint, Path] | None:
    """The checkpoint to continue from, applied to the server's model, strategy and history;
    None (said) when there is none."""
    path = find_checkpoint(server.logdir, server.run_name, server.checkpoint_dir)
    if path is None:
        run = (f"of run {server.run_name!r} "
               if server.run_name and not server.checkpoint_dir else "")
        server.say(f"resume: no checkpoint {run}under {server.checkpoint_dir or server.logdir}; "
                   "starting from round 1")
        return None
    checkpoint = load_checkpoint(path)
    if checkpoint.spec_hash != server.spec_hash:
        raise ConfigurationError(
            f"checkpoint {path} is for a different model (spec hash {checkpoint.spec_hash[:16]}"
            f"..., this model {server.spec_hash[:16]}...)")
    server.adapter.set_weights(checkpoint.weights)
    if hasattr(server.strategy, "load_state_dict"):
        server.strategy.load_state_dict(checkpoint.strategy_state)
    server.history.load_dict(checkpoint.history)
    run_name = path.parent.name if server.checkpoint_dir is None else checkpoint.run_name
    server.say(f"resuming run {run_name} after round {checkpoint.server_round} "
               f"(checkpoint {path})")
    return checkpoint, path


def open_run_folder(server, resumed: tuple[Checkpoint, Path] | None) -> RunFolder:
    """A resumed run never drifts into a new numbered folder: it continues in its checkpoint's
    folder, else in the folder named ``run_name`` if there is one."""
    if resumed is not None:
        checkpoint, path = resumed
        run_dir = (path.parent if server.checkpoint_dir is None
                   else server.logdir / checkpoint.run_name)
    elif (server.resume and server.run_name is not None
          and (server.logdir / server.run_name).is_dir()):
        run_dir = server.logdir / server.run_name
        server.say(f"resume: continuing in {run_dir}")
    else:
        return RunFolder(new_run_dir(server.logdir, server.run_name), True, False)
    created = not run_dir.is_dir()
    if created:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the run folder {run_dir}: "
                               f"{exc.strerror or exc}") from None
    return RunFolder(run_dir, created, not created)
