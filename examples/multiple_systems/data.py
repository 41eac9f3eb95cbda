"""Write each party's data as PyFed's .npy files, as PyFed's examples/data.py does.

The default dataset is digits, which ships with scikit-learn (no download). For MNIST, run
``PYFED_DATASET=mnist python data.py`` (or ``python data.py mnist``): it is read from the .npz
named by PYFED_MNIST, or downloaded with fetch_openml, and fails with a clear message offline.
"""
import os
import sys

from pyfed.data import load_dataset, save_partitions, split_for_clients
from pyfed.errors import PyFedError

num_clients = 3
dataset = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PYFED_DATASET", "digits")

try:
    X, y = load_dataset(dataset)
except PyFedError as exc:
    sys.exit(f"data.py: {exc}\nFor the built-in digits run `python data.py`; for a local MNIST "
             "file set PYFED_MNIST=/path/to/mnist.npz (arrays x and y).")

clients_data, clients_target, server_data, server_target = split_for_clients(X, y, num_clients)
for path in save_partitions(".", clients_data, clients_target, server_data, server_target):
    print(f"wrote {path.name}")
print(f"{dataset}: {len(clients_target[0])} examples per client, {len(server_target)} for the server's test")
