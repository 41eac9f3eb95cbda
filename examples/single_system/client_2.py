from pyfed.components import FL_Client
import os
import numpy as np
import tensorflow as tf

data = np.load("./data_client_2.npy")
target = np.load("./target_client_2.npy")
mnist = data.shape[1] == 784  # 64 features: digits (the default); 784: MNIST

epochs = 5 if mnist else 2
batch_size = 32
lr = 3e-4 if mnist else 0.005

loss = "sparse_categorical_crossentropy"
optimizer = tf.optimizers.Adam
metrics = ["accuracy"]

port = int(os.environ.get("PYFED_PORT", 54321))

client2 = FL_Client("client_2", data, target, server_port=port)
client2.train(epochs, batch_size, lr, loss, optimizer, metrics)
