"""FL_Server's option checks: each wrong value is refused when the server is built, with the
value and what was expected, never as a late failure in round 1."""

from __future__ import annotations

from ..errors import ConfigurationError


def _positive_integer(label: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{label} must be a positive integer; received {value!r}")


def check_server_options(*, num_clients, rounds, port, max_connections, round_timeout,
                         round_retries, progress_interval) -> None:
    _positive_integer("num_clients", num_clients)
    _positive_integer("rounds", rounds)
    if max_connections is not None:  # None: derived from the open-file limit
        _positive_integer("max_connections", max_connections)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be in [0, 65535]; received {port!r}")
    if round_timeout is not None and round_timeout <= 0:
        raise ConfigurationError(f"round_timeout must be positive; received {round_timeout}")
    if not isinstance(round_retries, int) or isinstance(round_retries, bool) or round_retries < 0:
        raise ConfigurationError(f"round_retries must be an integer >= 0; received {round_retries!r}")
    if not isinstance(progress_interval, (int, float)) or not progress_interval > 0:
        # It paces the waiting lines: 0 would print one every few milliseconds.
        raise ConfigurationError(f"progress_interval must be a number of seconds > 0; "
                                 f"received {progress_interval!r}")


def prepare_centralized_evaluation(server, loss, metrics) -> None:
    """``test_data`` needs a model that can evaluate: shapes for an unfitted scikit-learn
    estimator, a loss for an uncompiled Keras model."""
    from ..models import is_keras_model

    if server.test_data is None:
        return
    if len(server.test_data) != 2 or len(server.test_data[0]) != len(server.test_data[1]):
        raise ConfigurationError("test_data must be (x, y) of the same length")
    initialize = getattr(server.adapter, "initialize_from_data", None)
    if initialize is not None and not getattr(server.adapter, "initialized", True):
        initialize(*server.test_data)
    if is_keras_model(server.curr_model):
        if loss is None and not getattr(server.curr_model, "compiled", False):
            raise ConfigurationError(
                "test_data needs a loss to evaluate with: compile the model or pass loss=")
        server.adapter.compile(loss=loss, metrics=metrics)
