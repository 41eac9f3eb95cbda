"""The parts of the ``pyfed`` command; its entry point is :mod:`pyfed.cli` (``main``).

:mod:`.inputs` reads what the user names (a model function, .npy arrays), :mod:`.arguments`
checks option values, :mod:`.splitting` splits a dataset for the clients, :mod:`.subcommands`
runs ``experiment``, ``server``, ``client``, ``partition`` and ``token``, and :mod:`.parser`
builds the argument parser. TensorFlow is imported only by the subcommands that train.
"""

# Expected failures exit with 2, like argparse's own usage errors; Ctrl-C with 130, as a shell.
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
