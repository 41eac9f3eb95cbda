"""Server callbacks, in the style of Keras callbacks.

Subclass :class:`ServerCallback`, override the hooks you need, and pass
``FL_Server(..., callbacks=[MyCallback()])``::

    class Watch(ServerCallback):
        def on_round_end(self, server, server_round, logs):
            print(server_round, logs.get("test_accuracy"))

The hooks, in the order a run calls them, are documented on :class:`ServerCallback`. The
built-ins run first, in this order, and an instance of one of their classes (or a subclass)
passed in ``callbacks=`` takes its place:

- :class:`History`: records each round's logs; ``FL_Server.train()`` returns it.
- :class:`TensorBoard`: the run's event files (server scalars, client curves, HParams).
- :class:`Checkpointer`: the per-round checkpoint that ``resume=True`` continues from.
- :class:`ProgressPrinter`: one line per round and the status lines (only with ``verbose=1``).

Clients take Keras callbacks for their own training: ``FL_Client(..., fit_callbacks=[...])``.
"""

from .server.checkpointer import Checkpointer
from .tracking.history import History
from .tracking.hooks import CallbackList, ServerCallback
from .tracking.progress import ProgressPrinter
from .tracking.tensorboard import TensorBoard

__all__ = ["ServerCallback", "CallbackList", "History", "TensorBoard", "Checkpointer",
           "ProgressPrinter"]
