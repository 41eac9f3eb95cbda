"""Built-in datasets (datasets.py) and partitioners (partitioners.py), all importable from here.

Defaults work offline: scikit-learn ships digits.
"""

from .datasets import (digits_model, load_dataset, load_digits, load_mnist, save_partitions,
                       split_for_clients)
from .partitioners import (SCHEMES, by_label, dirichlet, iid, partition, partition_data, shards,
                           split, summary)

__all__ = ["load_digits", "load_mnist", "split_for_clients", "load_dataset", "save_partitions",
           "digits_model", "SCHEMES", "iid", "dirichlet", "shards", "by_label", "partition",
           "partition_data", "split", "summary"]
