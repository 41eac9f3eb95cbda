"""Stopping an asynchronous run (Ctrl-C, SIGTERM) while a version is being recorded and other
clients' updates wait to be folded: the server ends as a synchronous one does (status 130,
the clients told), instead of hanging. Real processes over loopback (SoftmaxRegression)."""

import sys
import textwrap

from procs import ProcessGroup, free_port

SERVER = textwrap.dedent("""
    import signal, sys, time
    from pyfed.callbacks import ServerCallback
    from pyfed.models import SoftmaxRegression
    from pyfed.server import FL_Server
    from pyfed.strategy import FedAsync

    class StopWhileRecording(ServerCallback):
        def on_round_end(self, server, version, logs):
            if version == 3:
                # The other clients' updates arrive meanwhile and wait for this version.
                time.sleep(1.0)
                signal.raise_signal(signal.SIGTERM)

    server = FL_Server(SoftmaxRegression(64, 10), 3, 1000, port=int(sys.argv[1]),
                       logdir=sys.argv[2], strategy=FedAsync(),
                       callbacks=[StopWhileRecording()])
    server.train()
""")


def test_a_stop_while_a_version_is_recorded_and_folds_wait_ends_the_run(tmp_path):
    port = free_port()
    logdir = tmp_path / "logs"
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    with ProcessGroup(tmp_path / "procs") as group:
        group.start("server", [sys.executable, script, port, logdir])
        for i in range(1, 4):
            group.role(f"client_{i}", "softmax-client", "--port", port, "--clients", 3,
                       "--index", i, "--logdir", logdir, "--epochs", 1)
        code = group.wait("server", timeout=60)  # hung here before the fix
        assert code == 130, group.dump()
        assert "stopped by SIGTERM" in group.output("server"), group.dump()
        for i in range(1, 4):  # told the server stopped: they end on their own
            group.wait(f"client_{i}", timeout=60)
