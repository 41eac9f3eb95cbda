"""pyfed.data and pyfed.partition: partitioners, split, summary, and the local MNIST loader."""

import numpy as np
import pytest

from pyfed import data
from pyfed.data import partitioners as part
from pyfed.errors import ConfigurationError, DatasetUnavailableError

SCHEMES = ("iid", "dirichlet", "shards", "by_label")
# 10 unbalanced classes, 1,000 examples: big enough for every scheme, small enough to be instant.
LABELS = np.repeat(np.arange(10), [150, 130, 120, 110, 100, 100, 90, 80, 70, 50])


def run(scheme, labels=LABELS, num_clients=5, seed=0, **kw):
    return data.partition(labels, num_clients, scheme, seed=seed, **kw)


def max_class_fraction(labels, parts):
    """Mean over clients of the share of the client's most common class (1.0: one class each)."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


# ---------------------------------------------------------------------------------------------
# Every scheme
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_parts_are_disjoint_cover_everything_and_are_int_index_arrays(scheme):
    parts = run(scheme)
    assert len(parts) == 5
    assert all(isinstance(p, np.ndarray) and p.dtype.kind == "i" and p.ndim == 1 for p in parts)
    everything = np.concatenate(parts)
    assert len(everything) == len(LABELS) == sum(len(p) for p in parts)
    assert np.array_equal(np.sort(everything), np.arange(len(LABELS)))  # disjoint and covering
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_parts_other_seed_other_parts(scheme):
    first, again, other = run(scheme, seed=7), run(scheme, seed=7), run(scheme, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_named_functions_match_the_dispatcher(scheme):
    direct = {"iid": lambda: data.iid(LABELS, 5, seed=3),
              "dirichlet": lambda: data.dirichlet(LABELS, 5, 0.5, seed=3),
              "shards": lambda: data.shards(LABELS, 5, 2, seed=3),
              "by_label": lambda: data.by_label(LABELS, 5, seed=3)}[scheme]()
    assert all(np.array_equal(a, b) for a, b in zip(direct, run(scheme, seed=3)))


@pytest.mark.parametrize("scheme", ["dirichlet", "shards", "by_label"])
def test_clients_data_is_not_sorted_by_label(scheme):
    # Keras' validation_split takes the tail unshuffled: a label-sorted client would be biased.
    for p in run(scheme):
        if len(np.unique(LABELS[p])) > 1:
            assert not np.all(np.diff(LABELS[p]) >= 0)


def test_one_hot_and_column_targets_partition_like_plain_labels():
    one_hot = np.eye(10, dtype=np.float32)[LABELS]
    for scheme in SCHEMES:
        plain = run(scheme)
        assert all(np.array_equal(a, b) for a, b in zip(plain, run(scheme, labels=one_hot)))
        assert all(np.array_equal(a, b) for a, b in zip(plain, run(scheme, labels=LABELS[:, None])))


def test_string_labels_work():
    names = np.array(["cat", "dog", "eel"])[LABELS % 3]
    parts = data.by_label(names, 3, seed=0)
    assert sorted(len(set(names[p])) for p in parts) == [1, 1, 1]


# ---------------------------------------------------------------------------------------------
# Scheme by scheme
# ---------------------------------------------------------------------------------------------

def test_iid_sizes_differ_by_at_most_one_and_classes_are_mixed():
    parts = data.iid(LABELS, 7, seed=0)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_near_iid():
    iid_skew = max_class_fraction(LABELS, data.iid(LABELS, 10, seed=0))
    skewed = np.mean([max_class_fraction(LABELS, data.dirichlet(LABELS, 10, 0.1, seed=s, min_size=5))
                      for s in range(3)])
    near_iid = np.mean([max_class_fraction(LABELS, data.dirichlet(LABELS, 10, 100, seed=s))
                        for s in range(3)])
    assert iid_skew < 0.25
    assert skewed > 0.6 and skewed > 2.5 * iid_skew
    assert near_iid < iid_skew + 0.08
    # Near IID also means near-equal sizes and every class everywhere.
    parts = data.dirichlet(LABELS, 10, 100, seed=0)
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)
    assert max(map(len, parts)) < 1.5 * min(map(len, parts))


def test_dirichlet_redraws_until_every_client_has_min_size():
    redrawn = 0
    for seed in range(20):  # about one first draw in six leaves a client under 30 here
        parts = data.dirichlet(LABELS, 8, 0.3, seed=seed, min_size=30)
        assert min(map(len, parts)) >= 30
        assert sum(map(len, parts)) == len(LABELS)
        first_draw = data.dirichlet(LABELS, 8, 0.3, seed=seed, min_size=0)
        redrawn += any(not np.array_equal(a, b) for a, b in zip(parts, first_draw))
    assert redrawn > 0


def test_dirichlet_gives_up_with_a_clear_error():
    with pytest.raises(ConfigurationError) as info:
        data.dirichlet(LABELS, 40, 0.01, seed=0, min_size=24, max_attempts=5)
    message = str(info.value)
    for fragment in ("alpha=0.01", "40 clients", "min_size=24", "5 draws", "raise alpha"):
        assert fragment in message, message
    # Impossible from the start: said at once, without drawing.
    with pytest.raises(ConfigurationError, match=r"min_size=10 for each of 200 clients needs 2000 "
                                                 r"examples; the data has 1000"):
        data.dirichlet(LABELS, 200, 0.5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_give_each_client_at_most_k_classes(k):
    for seed in range(3):
        parts = data.shards(LABELS, 10, shards_per_client=k, seed=seed)
        assert all(len(np.unique(LABELS[p])) <= k for p in parts)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
        if k > 1:  # with more shards than classes, shards (so clients) come out near-equal
            sizes = [len(p) for p in parts]
            assert max(sizes) <= 2 * min(sizes)


def test_shards_on_digits_look_like_mcmahan():
    _, y = data.load_digits()
    parts = data.shards(y, 10, 2, seed=0)
    assert [len(np.unique(y[p])) <= 2 for p in parts] == [True] * 10
    assert max_class_fraction(y, parts) > 0.5


def test_fewer_shards_than_classes_still_cover_everything():
    parts = data.shards(LABELS, 2, shards_per_client=2, seed=0)  # 4 shards, 10 classes
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    assert all(3 <= len(np.unique(LABELS[p])) <= 7 for p in parts)


def test_by_label_gives_disjoint_whole_classes():
    parts = data.by_label(LABELS, 4, seed=0)
    class_sets = [set(np.unique(LABELS[p]).tolist()) for p in parts]
    assert sorted(len(s) for s in class_sets) == [2, 2, 3, 3]  # round-robin deal of 10 classes
    assert set().union(*class_sets) == set(range(10))
    assert sum(len(s) for s in class_sets) == 10  # pairwise disjoint
    for p, classes in zip(parts, class_sets):  # whole classes: every example of each
        assert len(p) == sum(int((LABELS == c).sum()) for c in classes)
    assert [set(np.unique(LABELS[p]).tolist()) for p in data.by_label(LABELS, 4, seed=1)] != class_sets


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: data.partition(LABELS, 3, "zipf"),
     "unknown partition scheme 'zipf'; expected one of iid, dirichlet, shards, by_label"),
    (lambda: data.partition(LABELS, 3, "dirichlet", alpha=0), "alpha must be a finite number > 0"),
    (lambda: data.partition(LABELS, 3, "dirichlet", alpha=-1.5), "received -1.5"),
    (lambda: data.partition(LABELS, 3, "dirichlet", alpha=float("nan")), "received nan"),
    (lambda: data.partition(LABELS, 3, "dirichlet", alpha="lots"),
     "alpha must be a number > 0; received 'lots'"),
    (lambda: data.partition(LABELS, 3, "iid", alpha=0), "alpha must be a finite number > 0"),
    (lambda: data.partition(LABELS, 0), "num_clients must be at least 1; received 0"),
    (lambda: data.partition(LABELS, 2.5), "num_clients must be an integer >= 1; received 2.5"),
    (lambda: data.partition(LABELS, 1001), "num_clients (1001) exceeds the number of examples (1000)"),
    (lambda: data.partition(LABELS, 3, "shards", shards_per_client=0),
     "shards_per_client must be an integer >= 1; received 0"),
    (lambda: data.partition(LABELS, 3, "dirichlet", min_size=-1),
     "min_size must be an integer >= 0; received -1"),
    (lambda: data.shards(LABELS, 300, 4), "300 clients x shards_per_client=4 = 1200 shards, but "
                                          "the data has only 1000 examples"),
    (lambda: data.by_label(LABELS, 11),
     "num_clients (11) must not exceed the number of classes (10)"),
    (lambda: data.partition(np.array([], dtype=int), 2), "targets is empty"),
    (lambda: data.partition(np.zeros((4, 2, 2)), 2), "received shape (4, 2, 2)"),
])
def test_errors_name_the_bad_value_and_what_was_expected(call, message):
    with pytest.raises(ConfigurationError) as info:
        call()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # ConfigurationError is also a ValueError


def test_scheme_names_are_forgiving_about_case_and_dashes():
    assert all(np.array_equal(a, b) for a, b in zip(data.partition(LABELS, 3, "By-Label"),
                                                    data.partition(LABELS, 3, "by_label")))


# ---------------------------------------------------------------------------------------------
# split / partition_data
# ---------------------------------------------------------------------------------------------

def indexed_dataset():
    """x's row i holds i, so rows can be traced back to the original examples."""
    return np.arange(len(LABELS), dtype=np.float32)[:, None].repeat(3, axis=1), LABELS.copy()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_split_holds_out_a_stratified_server_set_then_partitions_the_rest(scheme):
    x, y = indexed_dataset()
    clients_x, clients_y, server_x, server_y = data.split(x, y, 4, scheme, server_fraction=0.2,
                                                          seed=1)
    assert len(clients_x) == len(clients_y) == 4
    for cx, cy in zip([*clients_x, server_x], [*clients_y, server_y]):
        assert cx.shape[1:] == (3,) and len(cx) == len(cy)
        assert np.array_equal(y[cx[:, 0].astype(int)], cy)  # data and target stay aligned
    rows = np.concatenate([c[:, 0] for c in clients_x] + [server_x[:, 0]]).astype(int)
    assert np.array_equal(np.sort(rows), np.arange(len(y)))
    assert len(server_y) == 200
    # Stratified: each class's share of the server set is its share of the data (+-1 example).
    assert np.all(np.abs(np.bincount(server_y, minlength=10) - np.bincount(y) * 0.2) <= 1)


def test_split_is_reproducible_and_partitions_like_its_scheme():
    x, y = indexed_dataset()
    first = data.split(x, y, 10, "shards", seed=4, shards_per_client=1)
    again = data.split(x, y, 10, "shards", seed=4, shards_per_client=1)
    other = data.split(x, y, 10, "shards", seed=5, shards_per_client=1)
    assert all(np.array_equal(a, b) for a, b in zip(first[1], again[1]))
    assert np.array_equal(first[3], again[3])
    assert not np.array_equal(first[2], other[2])
    assert all(len(np.unique(t)) == 1 for t in first[1])


def test_split_unstratified_and_without_a_server_set():
    x, y = indexed_dataset()
    _, clients_y, server_x, server_y = data.split(x, y, 3, server_fraction=0.1, stratify=False)
    assert len(server_y) == 100 and sum(map(len, clients_y)) == 900
    _, clients_y, server_x, server_y = data.split(x, y, 3, "dirichlet", server_fraction=0, alpha=1)
    assert server_x.shape == (0, 3) and server_y.shape == (0,)
    assert sum(map(len, clients_y)) == 1000
    clients_x, clients_y = data.partition_data(x, y, 3, "by_label", seed=2)
    assert sum(map(len, clients_x)) == 1000
    assert not set(clients_y[0]) & set(clients_y[1])


@pytest.mark.parametrize("fraction", [1, 1.5, -0.1, "half", None])
def test_split_rejects_a_bad_server_fraction(fraction):
    x, y = indexed_dataset()
    with pytest.raises(ConfigurationError, match=r"server_fraction must be in \[0, 1\); received"):
        data.split(x, y, 3, server_fraction=fraction)


def test_split_rejects_mismatched_lengths_and_passes_scheme_options_on():
    x, y = indexed_dataset()
    with pytest.raises(ConfigurationError, match="same length; received 1000 and 999"):
        data.split(x, y[:-1], 3)
    with pytest.raises(ConfigurationError, match=r"alpha must be a finite number > 0 .*; received 0"):
        data.split(x, y, 3, "dirichlet", alpha=0)
    with pytest.raises(ConfigurationError, match="num_clients .20. must not exceed the number of "
                                                 r"classes \(10\)"):
        data.split(x, y, 20, "by_label")


def test_split_for_clients_is_unchanged():
    x, y = data.load_digits()
    clients_x, clients_y, server_x, server_y = data.split_for_clients(x, y, 3, seed=1)
    assert [len(t) for t in clients_y] == [449, 449, 449] and len(server_y) == 450
    order = np.random.default_rng(1).permutation(len(y))
    assert np.array_equal(clients_y[0], y[order][:449])


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def test_summary_prints_and_returns_a_per_client_histogram(capsys):
    targets = [np.array([0, 0, 1]), np.array([2, 2, 2, 2]), np.array([], dtype=int)]
    text = data.summary(targets)
    assert capsys.readouterr().out == text + "\n"
    lines = [line.split() for line in text.splitlines()]
    assert lines == [["client", "n", "0", "1", "2"],
                     ["client_1", "3", "2", "1", "0"],
                     ["client_2", "4", "0", "0", "4"],
                     ["client_3", "0", "0", "0", "0"],
                     ["total", "7", "2", "1", "4"]]
    # Columns line up: every row has the same width.
    assert len({len(line) for line in text.splitlines()}) == 1


def test_summary_with_names_num_classes_and_quietly(capsys):
    text = data.summary({"alice": [1, 1], "server": [0, 3]}, num_classes=5, print_it=False)
    assert capsys.readouterr().out == ""
    assert [line.split() for line in text.splitlines()] == [
        ["client", "n", "0", "1", "2", "3", "4"], ["alice", "2", "0", "2", "0", "0", "0"],
        ["server", "2", "1", "0", "0", "1", "0"], ["total", "4", "1", "2", "0", "1", "0"]]
    with pytest.raises(ConfigurationError, match=r"num_classes=2 expects labels 0..1; the targets "
                                                 r"also hold \[3\]"):
        data.summary([[0, 3]], num_classes=2, print_it=False)


def test_summary_of_a_real_partition_adds_up():
    parts = data.dirichlet(LABELS, 4, 0.3, seed=0)
    text = data.summary([LABELS[p] for p in parts], print_it=False)
    total = text.splitlines()[-1].split()
    assert total[:2] == ["total", "1000"]
    assert [int(v) for v in total[2:]] == np.bincount(LABELS).tolist()


# ---------------------------------------------------------------------------------------------
# load_mnist from local files (never the network here)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_pickle(monkeypatch):
    """Fail the test if anything asks np.load to unpickle."""
    real_load = np.load

    def load(*args, **kwargs):
        assert not kwargs.get("allow_pickle", False), "np.load was asked to unpickle"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", load)


def test_load_mnist_missing_file_names_the_path(tmp_path, no_pickle):
    missing = tmp_path / "nowhere" / "mnist.npz"
    with pytest.raises(DatasetUnavailableError) as info:
        data.load_mnist(missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)


@pytest.mark.parametrize("keys", [("x", "y"), ("data", "target")])
def test_load_mnist_reads_a_local_npz(tmp_path, keys, no_pickle):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12).astype(np.uint8)
    file = tmp_path / "mnist.npz"
    np.savez(file, **{keys[0]: images, keys[1]: labels})
    x, y = data.load_mnist(file)
    assert x.shape == (12, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert np.allclose(x * 255, images.reshape(12, -1))
    assert y.dtype == np.int64 and np.array_equal(y, labels)
    x2, _ = data.load_mnist(str(file))  # a str path too
    assert np.array_equal(x, x2)


def test_load_mnist_from_the_environment_and_already_scaled(tmp_path, monkeypatch, no_pickle):
    file = tmp_path / "scaled.npz"
    np.savez(file, x=np.full((3, 784), 0.5, dtype=np.float64), y=np.array([1, 2, 3]))
    monkeypatch.setenv("PYFED_MNIST", str(file))
    x, y = data.load_mnist()
    assert np.allclose(x, 0.5) and y.tolist() == [1, 2, 3]
    assert data.load_dataset("mnist")[1].tolist() == [1, 2, 3]


def test_load_mnist_bad_files_are_unavailable_not_unpickled(tmp_path, no_pickle):
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, images=np.zeros((2, 784)), labels=np.zeros(2))
    with pytest.raises(DatasetUnavailableError, match=r"holds \['images', 'labels'\]; expected x and y"):
        data.load_mnist(wrong_keys)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"evil": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DatasetUnavailableError, match="never unpickles"):
        data.load_mnist(objects)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 784)))
    with pytest.raises(DatasetUnavailableError, match="single .npy array"):
        data.load_mnist(single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not numpy at all")
    with pytest.raises(DatasetUnavailableError, match=f"cannot read MNIST file {garbage}"):
        data.load_mnist(garbage)


def test_load_dataset_names():
    x, y = data.load_dataset("digits")
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int64
    with pytest.raises(ConfigurationError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")


def test_partition_module_is_re_exported_and_needs_no_tensorflow():
    import subprocess
    import sys

    for name in ("iid", "dirichlet", "shards", "by_label", "partition", "split", "summary",
                 "partition_data", "SCHEMES"):
        assert getattr(data, name) is getattr(part, name)
    code = ("import sys, pyfed.data.partitioners; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
