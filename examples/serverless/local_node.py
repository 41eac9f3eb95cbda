"""A serverless node: trains a Keras model on half of digits and federates through a folder.

Run two of them, each in its own terminal (or on machines that share the folder):

    python local_node.py 1        # digits 0-4
    python local_node.py 2        # digits 5-9

Alone, each would know only its five digits; through the folder both learn all ten.
"""

import sys

import keras
import numpy as np

from pyfed.data import digits_model, load_digits
from pyfed.keras import FederatedCallback
from pyfed.serverless import FederatedNode

index = int(sys.argv[1])  # 1: digits 0-4, 2: digits 5-9
folder = sys.argv[2] if len(sys.argv) > 2 else "shared_folder"

x, y = load_digits()
order = np.random.default_rng(0).permutation(len(y))  # the same split on every node
x, y = x[order], y[order]
x_test, y_test, x, y = x[:450], y[:450], x[450:], y[450:]
mine = (y < 5) if index == 1 else (y >= 5)

keras.utils.set_random_seed(0)  # every node starts from the same weights
model = digits_model()
model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])

# sync: each epoch waits (up to timeout) for both nodes, then both hold the same model.
with FederatedNode(folder, f"node_{index}", mode="sync", num_nodes=2, timeout=120) as node:
    model.fit(x[mine], y[mine], epochs=8, batch_size=32, verbose=2,
              callbacks=[FederatedCallback(node)])

loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"node_{index}: test accuracy on all ten digits {accuracy:.4f}")
