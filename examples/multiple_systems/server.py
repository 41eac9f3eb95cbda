from pyfed.components import FL_Server
import os
import numpy as np
import tensorflow as tf

data = np.load("./data_server.npy")
target = np.load("./target_server.npy")
mnist = data.shape[1] == 784  # 64 features: digits (the default); 784: MNIST

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

lr = 3e-4 if mnist else 0.005
num_clients = 3
rounds = 2 if mnist else 5
# The port clients connect to; open it in this machine's firewall.
port = int(os.environ.get("PYFED_PORT", 54321))

model.compile(loss=loss, optimizer=optimizer(lr), metrics=metrics)

server = FL_Server(curr_model=model,
                   num_clients=num_clients,
                   rounds=rounds,
                   port=port,
                   multi_system=True)
server.train()
server.test(data, target, loss, optimizer, lr, metrics)
