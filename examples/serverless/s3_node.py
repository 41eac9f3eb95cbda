"""A serverless node federating through S3 (pip install pyfed[s3]).

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
    python s3_node.py 1 s3://my-bucket/digits-run     # digits 0-4
    python s3_node.py 2 s3://my-bucket/digits-run     # digits 5-9

For an S3-compatible server (MinIO, moto_server...) set PYFED_S3_ENDPOINT=http://host:port.
Async mode: a node never waits for the other; each epoch it mixes the other's latest update,
weighted by how many epochs old it is (hinge: full weight up to 4 epochs behind).
"""

import os
import sys

import keras
import numpy as np

from pyfed.data import digits_model, load_digits
from pyfed.keras import FederatedCallback
from pyfed.serverless import FederatedNode

index, folder = int(sys.argv[1]), sys.argv[2]
endpoint = os.environ.get("PYFED_S3_ENDPOINT")
storage_options = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else None

x, y = load_digits()
order = np.random.default_rng(0).permutation(len(y))
x, y = x[order], y[order]
x_test, y_test, x, y = x[:450], y[:450], x[450:], y[450:]
mine = (y < 5) if index == 1 else (y >= 5)

keras.utils.set_random_seed(0)
model = digits_model()
model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])

with FederatedNode(folder, f"node_{index}", mode="async", staleness="hinge",
                   storage_options=storage_options) as node:
    model.fit(x[mine], y[mine], epochs=8, batch_size=32, verbose=2,
              callbacks=[FederatedCallback(node)])

loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"node_{index}: test accuracy on all ten digits {accuracy:.4f}")
