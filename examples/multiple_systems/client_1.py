from pyfed.components import FL_Client
import os
import sys
import numpy as np
import tensorflow as tf

data = np.load("./data_client_1.npy")
target = np.load("./target_client_1.npy")
mnist = data.shape[1] == 784  # 64 features: digits (the default); 784: MNIST

epochs = 5 if mnist else 2
batch_size = 32
lr = 3e-4 if mnist else 0.005

loss = "sparse_categorical_crossentropy"
optimizer = tf.optimizers.Adam
metrics = ["accuracy"]

# The IP of the machine running server.py (it prints it): python client_1.py 192.168.1.153
server_ip = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PYFED_SERVER_IP", "127.0.0.1")
# The port server.py listens on.
server_port = int(os.environ.get("PYFED_PORT", 54321))

client1 = FL_Client(name="client_1",
                    data=data,
                    target=target,
                    server_ip=server_ip,
                    server_port=server_port)

client1.train(epochs, batch_size, lr, loss, optimizer, metrics)
