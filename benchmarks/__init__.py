"""Round overhead of PyFed against a raw loopback-socket floor, for the README's model.

    .venv/bin/python -m benchmarks                      # 3 clients, 15 rounds (+1 warm-up)
    .venv/bin/python -m benchmarks --clients 3 10 --rounds 5 --json bench.json
    .venv/bin/python -m benchmarks --memory-clients 3 10 50   # server memory vs clients
    .venv/bin/python -m benchmarks --scale 1000               # 1,000 concurrent clients
    .venv/bin/python -m benchmarks --async-race               # sync vs FedAsync vs FedBuff
    .venv/bin/python -m benchmarks --quick                    # smoke run of every section

(from the repository's root; ``scripts/bench.py`` takes the same arguments.)

The model is the README's dense net, 784-500-1000-2000-1000-500-10 with biases (5,402,010
float32 parameters, 21.6 MB). For each client count N it measures, in the same run:

* PyFed: one ``FL_Server`` process and N numpy-only ``FL_Client`` processes whose
  ``NumpyModel.fit`` echoes the weights, so a round is pure overhead (framing, sockets, threads,
  validation, FedAvg). The per-round time is the server's own ``history["round_seconds"]``
  (FIT posted -> every result folded -> ``strategy.finish`` -> ``adapter.set_weights``).
* The floor: the same topology with raw sockets. The bench process ``sendall``s the weights (one
  contiguous buffer) to N client processes, which ``recv_into`` a preallocated buffer and
  ``sendall`` it back; the bench ``recv_into``s a preallocated buffer per client and folds the
  cheapest numpy weighted sum there is: float32 ``acc += w * x`` in cache-sized chunks (one read
  of each update; PyFed also reads the global weights to sum deltas, and checks every value),
  then scales it to the mean. It runs once with one thread per client (as PyFed does) and once
  sequentially; the faster median is the floor.

Each side runs 1 warm-up round plus ``--rounds`` measured rounds, and the sides take turns round
by round (the PyFed server waits for a "go" from the bench before each round, and answers
"done" only after the checkpoint it saves between rounds, so that never overlaps a floor round),
so background load on a small machine hits both alike. The table gives the median [min-max] and
the ratio of the medians. Also reported: CPU time and minor page faults per round on each side
(less sensitive to other load than wall time), the PyFed server's peak RSS above its idle
baseline (VmHWM minus the VmRSS it read from /proc/self/status before any client connected, with
VmHWM reset there), and a numpy-only client's start-up time.

Three more sections run when asked (then the overhead section above runs only if ``--clients`` is
given too):

* ``--memory-clients N ...``: the server's peak RSS above its idle baseline on the README model
  with N echo clients, in multiples of the model size (target: under 4x at the largest N, and
  flat in N). The clients are threads, ``--per-process`` (10) to a process, each with its own
  socket and handshake. Unlike the overhead section, the bench keeps no copy of the weights in
  the server process, and the modules PyFed imports lazily in round 1 (TensorBoard's writer,
  zipfile) are imported before the baseline, so the figure is what the server itself holds.
  The report says after which server step (fold, finish, set_weights, checkpoint...) the peak
  was reached, for the first and last round.
* ``--scale N ...``: ``--scale-rounds`` (1) round(s) with N concurrent numpy echo clients
  (threads in ``--scale-processes`` (4) processes) on a 102,538-parameter model: the time until
  all are connected (from spawning the client processes), the round time, the server's peak
  memory and its cost per connection, the CPU that N idle connections burn (``--scale-idle``
  seconds), the accept loop's Thread.start time, and the kernel's listen-queue overflows.
  ``--py-spy PATH`` records the server with py-spy (50 Hz, raw stacks) and prints its top frames.

* ``--async-race``: sync FedAvg against FedAsync and FedBuff on digits with 5 client
  processes, one of them 4x slower (``async_race``, children in ``async_roles``): the wall time
  until the test accuracy first reaches a target (0.88 with SoftmaxRegression, 0.93 with the
  Keras MLP: ``--async-model keras``), the accuracy at a fixed wall-clock budget, and the
  server's peak memory.

``--pool-size`` sets the server's ``buffer_pool_size`` in every section; ``--quick`` is a smoke
run of all three sections in about a minute (not for comparisons). Child environment variables
pass through, so e.g. ``MALLOC_MMAP_THRESHOLD_=1048576`` or a ``PYTHONPATH`` with a patched copy
of pyfed can be compared (a folder holding that ``pyfed`` package; the children find this
``benchmarks`` package after it); both are printed with the results.

Every process it starts is a child it ends by PID in a ``finally``; sockets bind 127.0.0.1 only;
every wait is bounded (``--timeout`` per client count). No TensorFlow anywhere: the children
check ``sys.modules`` and report.

Modules: ``__main__`` (options and the report), one per section (``overhead`` with ``floor`` and
``overhead_report``, ``startup``, ``memory``, ``scale``; ``fleet`` runs the last two), the
children's programs (``overhead_roles``, ``fleet_roles``, started through ``child``), what the
servers observe through ``FL_Server(..., callbacks=[...])`` (``server_probes``: no private
method of PyFed is patched), and the shared helpers (``processes``, ``probes``, ``model``,
``records``).
"""
