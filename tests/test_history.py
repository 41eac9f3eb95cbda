"""pyfed.tracking.history.History: one entry per round in every series, a cap on the names a
run keeps, and the dict form checkpoints store."""

from __future__ import annotations

import json
import logging

from pyfed.tracking.history import History
from pyfed.wire.limits import MAX_HISTORY_KEYS


def test_every_series_has_one_entry_per_round_with_none_where_it_was_missing():
    history = History()
    history.record(1, {"fit_loss": 0.9, "participants": 3})
    history.record(2, {"fit_loss": 0.7})                        # participants missing
    history.record(3, {"fit_loss": 0.5, "eval_accuracy": 0.8})  # a name first seen in round 3
    assert history.rounds == [1, 2, 3]
    assert history.history == {"fit_loss": [0.9, 0.7, 0.5], "participants": [3, None, None],
                               "eval_accuracy": [None, None, 0.8]}
    # Keras' shape: history.history[name][round - 1]
    assert history.history["fit_loss"][2 - 1] == 0.7


def test_rounds_are_recorded_as_given_even_an_empty_one():
    history = History()
    history.record(4, {"fit_loss": 1.0})  # a resumed run starts past round 1
    history.record(5, {})
    assert history.rounds == [4, 5] and history.history == {"fit_loss": [1.0, None]}


def test_last_is_the_latest_entry_or_the_default():
    history = History()
    assert history.last("fit_loss") is None and history.last("fit_loss", -1) == -1
    history.record(1, {"fit_loss": 0.9})
    history.record(2, {"fit_loss": 0.4, "eval_loss": 0.6})
    assert history.last("fit_loss") == 0.4 and history.last("eval_loss") == 0.6
    history.record(3, {"eval_loss": 0.5})
    assert history.last("fit_loss", "unset") is None  # round 3 had none: the series says so
    assert history.last("never", 7) == 7


def test_the_dict_form_round_trips_through_json_and_is_a_copy():
    history = History()
    history.record(1, {"fit_loss": 0.9, "clients": ["a", "b"]})
    history.record(2, {"fit_loss": 0.4, "eval_accuracy": 0.75})
    data = history.to_dict()
    assert data == {"rounds": [1, 2], "history": {"fit_loss": [0.9, 0.4],
                                                   "clients": [["a", "b"], None],
                                                   "eval_accuracy": [None, 0.75]}}
    data["rounds"].append(99)
    data["history"]["fit_loss"].append(99)
    assert history.rounds == [1, 2] and history.history["fit_loss"] == [0.9, 0.4]

    back = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert back.rounds == history.rounds and back.history == history.history
    back.record(3, {"fit_loss": 0.2})  # a resumed run goes on recording
    assert back.history["fit_loss"] == [0.9, 0.4, 0.2] and back.history["eval_accuracy"][-1] is None
    assert history.rounds == [1, 2]  # the original is untouched
    assert repr(back) == "History(rounds=3, keys=['clients', 'eval_accuracy', 'fit_loss'])"


def test_from_dict_accepts_an_empty_document():
    history = History.from_dict({})
    assert history.rounds == [] and history.history == {}
    assert history.max_keys == MAX_HISTORY_KEYS


def test_names_beyond_the_cap_are_dropped_with_one_printable_warning(caplog):
    caplog.set_level(logging.WARNING, logger="pyfed")
    history = History(max_keys=3)
    history.record(1, {"a": 1, "b": 2})
    history.record(2, {"a": 3, "c": 4, "evil\nFORGED LOG LINE" + "x" * 100: 5, "d": 6})
    history.record(3, {"e": 7, "b": 8})
    assert sorted(history.history) == ["a", "b", "c"]
    assert history.history == {"a": [1, 3, None], "b": [2, None, 8], "c": [None, 4, None]}
    assert history.rounds == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once per run, not once per name
    assert warnings[0].startswith("round 2: the history already holds 3 different names; new "
                                  "ones (evil\\nFORGED LOG LINE")
    assert "\n" not in warnings[0] and "[80 more characters]" in warnings[0]


def test_the_default_cap_comes_from_the_wire_limits():
    history = History()
    assert history.max_keys == MAX_HISTORY_KEYS == 512
    history.record(1, {f"metric_{i}": i for i in range(MAX_HISTORY_KEYS + 10)})
    assert len(history.history) == MAX_HISTORY_KEYS
    assert "metric_0" in history.history and f"metric_{MAX_HISTORY_KEYS}" not in history.history
