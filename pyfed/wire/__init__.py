"""The PYFD wire protocol: typed messages, sans-I/O framing and its state table, the socket
transport, the HMAC handshake, codecs and model specs. No TensorFlow and no threads of its own;
it imports nothing from the server, the client or the strategies."""
