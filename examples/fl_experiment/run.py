"""PyFed's FL_Experiment example: one script starts the server and every client itself.

Digits (bundled with scikit-learn) by default; ``PYFED_DATASET=mnist python run.py`` uses MNIST
from the .npz named by PYFED_MNIST, or fetch_openml when online.
"""
from pyfed.experiment import FL_Experiment
from pyfed.data import load_dataset, split_for_clients
from pyfed.errors import PyFedError
import os
import sys
import tensorflow as tf


def fetch_data(dataset):
    try:
        return load_dataset(dataset)
    except PyFedError as exc:
        sys.exit(f"run.py: {exc}")


if __name__ == "__main__":
    dataset = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PYFED_DATASET", "digits")
    mnist = dataset == "mnist"

    lr = 3e-4 if mnist else 0.005
    num_clients = 3
    rounds = 2 if mnist else 5
    epochs = 5 if mnist else 2
    batch_size = 32
    port = int(os.environ.get("PYFED_PORT", 54321))

    print(f"\n⏳ Loading {dataset}...\n")
    data, target = fetch_data(dataset)

    model = tf.keras.models.Sequential()
    model.add(tf.keras.layers.InputLayer((data.shape[1],)))
    if mnist:  # PyFed's README MLP
        model.add(tf.keras.layers.Dense(500, activation='relu'))
        model.add(tf.keras.layers.Dense(1000, activation='relu'))
        model.add(tf.keras.layers.Dense(2000, activation='relu'))
        model.add(tf.keras.layers.Dense(1000, activation='relu'))
        model.add(tf.keras.layers.Dense(500, activation='relu'))
    else:  # 8x8 digits learn quickly with a small MLP
        model.add(tf.keras.layers.Dense(64, activation='relu'))
    model.add(tf.keras.layers.Dense(10, activation='softmax'))

    loss = "sparse_categorical_crossentropy"
    optimizer = tf.optimizers.Adam
    metrics = ["accuracy"]

    print("\n📨 Distributing dataset...\n")
    clients_data, clients_target, server_data, server_target = split_for_clients(data, target, num_clients)

    exp = FL_Experiment(num_clients=num_clients,
                        clients_data=clients_data,
                        clients_target=clients_target,
                        server_data=server_data,
                        server_target=server_target,
                        port=port)

    exp.run(model=model,
            rounds=rounds,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            loss=loss,
            metrics=metrics)
