"""pyfed.wire.spec: model specs, their hash (which travels in HELLO), their JSON form and the
wording of a mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyfed.models import NumpyModel
from pyfed.wire.spec import (TensorSpec, first_difference, spec_from_json, spec_hash,
                             spec_of_arrays, spec_to_json)


def dense(kernel=(3, 2), bias=(2,), dtype="<f4", names=("kernel", "bias"), paths=("", "")):
    return [TensorSpec(names[0], kernel, dtype, paths[0]), TensorSpec(names[1], bias, dtype, paths[1])]


# ---------------------------------------------------------------------------------------------
# spec_of_arrays
# ---------------------------------------------------------------------------------------------


def test_spec_of_arrays_takes_shapes_and_dtypes_and_numbers_unnamed_tensors():
    arrays = [np.zeros((3, 2), np.float32), np.arange(4, dtype=">i8"), np.float64(1.5),
              [[1.0, 2.0]]]
    spec = spec_of_arrays(arrays)
    assert spec == [TensorSpec("weight_0", (3, 2), "<f4"), TensorSpec("weight_1", (4,), ">i8"),
                    TensorSpec("weight_2", (), "<f8"), TensorSpec("weight_3", (1, 2), "<f8")]
    assert all(type(d) is int for s in spec for d in s.shape)  # plain ints: JSON-safe
    named = spec_of_arrays(arrays[:2], names=["kernel", 7])
    assert [s.name for s in named] == ["kernel", "7"] and named[0].path == ""
    assert spec_of_arrays([]) == []


def test_a_numpy_models_spec_is_the_spec_of_its_arrays():
    weights = [np.zeros((5, 3), np.float32), np.zeros(3, np.float32)]
    assert NumpyModel(weights).spec() == spec_of_arrays(weights)


def test_describe_prefers_the_path_for_humans():
    assert TensorSpec("kernel", (3, 2), "<f4", "dense_1/kernel").describe() == \
        "dense_1/kernel [3, 2] <f4"
    assert TensorSpec("bias", (), "<f8").describe() == "bias [] <f8"


# ---------------------------------------------------------------------------------------------
# spec_hash
# ---------------------------------------------------------------------------------------------


def test_the_spec_hash_is_pinned():
    # It travels in HELLO and in every checkpoint: peers and files of different PyFed versions
    # must agree on it, so its canonical form may never change.
    assert spec_hash(dense()) == "201d9bded23b85949cf164cc40d241040b732f13117250fac290865b0166343e"
    assert spec_hash([]) == "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"


def test_the_spec_hash_ignores_paths_and_how_the_shape_is_written():
    # Keras numbers auto-named layers per process (dense vs dense_3): paths must not count.
    assert spec_hash(dense(paths=("dense_3/kernel", "dense_3/bias"))) == spec_hash(dense())
    assert spec_hash(dense(kernel=[3, 2], bias=[2])) == spec_hash(dense())
    arrays = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
    assert spec_hash(spec_of_arrays(arrays, ["kernel", "bias"])) == spec_hash(dense())


@pytest.mark.parametrize("other", [
    dense(names=("kernel", "b")),                 # a name
    dense(kernel=(2, 3)),                         # a transposed shape
    dense(kernel=(3, 2, 1)),                      # one more dimension
    dense(bias=()),                               # a scalar
    dense(dtype="<f8"),                           # a dtype
    dense(dtype=">f4"),                           # the byte order
    dense()[:1],                                  # one tensor fewer
    dense() + [TensorSpec("extra", (1,), "<f4")],  # one more
    list(reversed(dense())),                      # the order
], ids=["name", "shape", "ndim", "scalar", "dtype", "byte-order", "fewer", "more", "order"])
def test_the_spec_hash_changes_with_names_shapes_dtypes_and_order(other):
    assert spec_hash(other) != spec_hash(dense())


# ---------------------------------------------------------------------------------------------
# JSON form
# ---------------------------------------------------------------------------------------------


def test_the_json_form_round_trips_through_real_json():
    spec = dense(kernel=(784, 10), paths=("dense/kernel", "dense/bias")) + [
        TensorSpec("step", (), "<i8", "optimizer/step")]
    data = json.loads(json.dumps(spec_to_json(spec)))
    assert data == [["kernel", [784, 10], "<f4", "dense/kernel"], ["bias", [2], "<f4", "dense/bias"],
                    ["step", [], "<i8", "optimizer/step"]]
    back = spec_from_json(data)
    assert back == spec and spec_hash(back) == spec_hash(spec)
    assert all(isinstance(s.shape, tuple) for s in back)


@pytest.mark.parametrize("bad", [
    None, 5, [5], [None],
    [["kernel", [3, 2], "<f4"]],                 # three fields
    [["kernel", [3, 2], "<f4", "", "extra"]],    # five
    [["kernel", 3, "<f4", ""]],                  # a shape that is not a list
    {"kernel": [3, 2]},                          # an object
], ids=["none", "int", "int-entry", "none-entry", "three", "five", "int-shape", "object"])
def test_a_malformed_json_spec_raises_type_or_value_error(bad):
    # The gateway catches exactly these two when it explains a client's mismatch.
    with pytest.raises((TypeError, ValueError)):
        spec_from_json(bad)


# ---------------------------------------------------------------------------------------------
# first_difference
# ---------------------------------------------------------------------------------------------


def test_first_difference_names_the_first_differing_tensor():
    ours = dense(paths=("dense/kernel", "dense/bias"))
    theirs = dense(kernel=(3, 4), bias=(4,), paths=("dense_7/kernel", "dense_7/bias"))
    assert first_difference(ours, theirs) == (
        "tensor 0: expected dense/kernel [3, 2] <f4, received dense_7/kernel [3, 4] <f4")
    assert first_difference(ours, dense(dtype="<f8")) == (
        "tensor 0: expected dense/kernel [3, 2] <f4, received kernel [3, 2] <f8")
    assert first_difference(dense(), dense(bias=(3,))) == (
        "tensor 1: expected bias [2] <f4, received bias [3] <f4")


def test_first_difference_counts_tensors_and_says_when_only_names_differ():
    ours = dense()
    assert first_difference(ours, ours[:1]) == "expected 2 tensors, received 1"
    assert first_difference(ours[:1], ours) == "expected 1 tensors, received 2"
    # A shape difference within the common part is named before the count.
    assert first_difference(ours, [TensorSpec("k", (1,), "<f4")]).startswith("tensor 0:")
    assert first_difference(ours, dense(names=("w", "b"))) == (
        "no difference in shapes or dtypes (names differ)")
