"""Tests of the network-namespace LAN harness (tests/netlan.py).

Skipped (with the reason) only when network namespaces cannot be created here.
All traffic stays inside namespaces created by the harness; the root-namespace
isolation probe uses SO_DONTROUTE so it can never leave through a real interface.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from netlan import NamespaceLAN, NamespaceLANError, netns_available, parse_rate

PY = sys.executable
PORT = 45123


@pytest.fixture(scope="session")
def netns_ok():
    ok, reason = netns_available()
    if not ok:
        print(f"netns LAN tests skipped: {reason}")
        pytest.skip(f"network namespaces unavailable: {reason}")
    return True


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout


def _assert_reaped(procs):
    for p in procs:
        assert p.returncode is not None, f"pid {p.pid} not reaped"
        with pytest.raises(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)


def _pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once pid no longer exists or is only a zombie (dead, awaiting its new parent)."""
    for _ in range(int(timeout / 0.05) + 1):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# Echo server: serves exactly n connections, each one line; replies with the peer address.
ECHO_SERVER = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(16)
s.settimeout(30)
for _ in range(n):
    c, addr = s.accept()
    c.settimeout(10)
    buf = b""
    for _ in range(64):
        chunk = c.recv(4096)
        buf += chunk
        if not chunk or b"\n" in buf:
            break
    c.sendall(b"echo:" + buf.strip() + b"|peer=" + addr[0].encode() + b"\n")
    c.close()
print("served", n, flush=True)
"""

# Client one-liner. SO_DONTROUTE: only on-link destinations (positive control for the
# isolation probe below, which uses the same option from the root namespace).
ECHO_CLIENT = (
    "import socket,sys;s=socket.socket();"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_DONTROUTE,1);s.settimeout(5);"
    "s.connect((sys.argv[1],int(sys.argv[2])));s.sendall(sys.argv[3].encode()+b'\\n');"
    "print(s.makefile('rb').readline().decode().strip())"
)


def test_echo_across_namespaces_and_isolation(netns_ok, tmp_path):
    hosts = ["server", "c1", "c2", "c3"]
    t0 = time.monotonic()
    with NamespaceLAN(hosts) as lan:
        prefix = lan.prefix
        setup_s = time.monotonic() - t0
        assert set(lan.namespaces) <= set(_netns_names())
        addrs = [lan.address(h) for h in hosts]
        assert len(set(addrs)) == 4 and all(a.startswith("10.203.") for a in addrs)
        assert addrs[0].endswith(".1") and addrs[3].endswith(".4")
        # nothing of ours leaked into the root namespace
        assert prefix not in _root_links()

        srv_log = open(tmp_path / "server.out", "w")
        srv = lan.popen("server", [PY, "-c", ECHO_SERVER, str(PORT), "3"],
                        stdout=srv_log, stderr=subprocess.STDOUT)
        lan.wait_listening("server", PORT, timeout=10)

        server_addr = lan.address("server")
        for c in ["c1", "c2", "c3"]:
            r = lan.run(c, [PY, "-c", ECHO_CLIENT, server_addr, str(PORT), f"hi-{c}"], timeout=20)
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == f"echo:hi-{c}|peer={lan.address(c)}"
        assert srv.wait(timeout=10) == 0
        srv_log.close()
        assert (tmp_path / "server.out").read_text().strip() == "served 3"

        # --- isolation: the root namespace has no path to the LAN -------------------
        # (a) the address is not local in the root namespace and no LAN device is there
        root_addrs = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                                    text=True, timeout=10).stdout
        assert f" {server_addr}/" not in root_addrs
        # (b) a second server now listens in the server namespace, so any path would connect
        srv2 = lan.popen("server", [PY, "-c", ECHO_SERVER, str(PORT), "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lan.wait_listening("server", PORT, timeout=10)
        # (c) connecting from the root namespace fails fast.  SO_DONTROUTE restricts the
        #     lookup to on-link routes, so the SYN can never be handed to the host's
        #     default gateway (which would put it on the real network).
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)
        s.settimeout(2)
        t = time.monotonic()
        with pytest.raises(OSError) as ei:
            s.connect((server_addr, PORT))
        elapsed = time.monotonic() - t
        s.close()
        assert elapsed < 2.5
        assert isinstance(ei.value, TimeoutError) or ei.value.errno in (
            errno.ENETUNREACH, errno.EHOSTUNREACH), ei.value
        # same probe from a LAN namespace succeeds (server still serving its 1 connection)
        r = lan.run("c1", [PY, "-c", ECHO_CLIENT, server_addr, str(PORT), "again"], timeout=20)
        assert r.stdout.strip() == f"echo:again|peer={lan.address('c1')}", r.stderr
        assert srv2.wait(timeout=10) == 0

        procs = lan.processes
    print(f"setup {setup_s:.2f}s, total {time.monotonic() - t0:.2f}s, root connect failed in "
          f"{elapsed * 1000:.1f} ms with {ei.value!r}")
    assert not [n for n in _netns_names() if n.startswith(prefix)]
    assert prefix not in _root_links()
    assert len(procs) >= 6
    _assert_reaped(procs)
    assert lan.cleanup_errors == []


def test_popen_env_cwd_and_file_capture(netns_ok, tmp_path):
    code = ("import os,sys;print(os.environ['PYFED_TEST_TOKEN']);print(os.getcwd());"
            "print(sys.executable);print('err-line',file=sys.stderr)")
    env = dict(os.environ, PYFED_TEST_TOKEN="tok-42")
    with NamespaceLAN(["a"]) as lan:
        with open(tmp_path / "o.txt", "w") as out, open(tmp_path / "e.txt", "w") as err:
            p = lan.popen("a", [PY, "-c", code], env=env, cwd=str(tmp_path), stdout=out, stderr=err)
            assert p.wait(timeout=20) == 0
        # the process really runs in the namespace: its only non-lo interface is ours
        r = lan.run("a", ["ip", "-o", "-4", "addr", "show"], timeout=10)
        assert lan.address("a") in r.stdout and lan.interface("a") in r.stdout
        r = lan.run("a", [PY, "-c", "import sys; print(sys.stdin.read().upper())"], input="xyz",
                    timeout=20)
        assert r.stdout.strip() == "XYZ"
        with pytest.raises(subprocess.TimeoutExpired):
            lan.run("a", [PY, "-c", "import time; time.sleep(60)"], timeout=0.5)
    lines = (tmp_path / "o.txt").read_text().splitlines()
    assert lines == ["tok-42", str(tmp_path), PY]
    assert (tmp_path / "e.txt").read_text().strip() == "err-line"
    _assert_reaped(lan.processes)


def test_cleanup_kills_stragglers_even_on_error(netns_ok, tmp_path):
    gc_pid_file = tmp_path / "grandchild.pid"
    # ignores SIGTERM -> needs SIGKILL after term_grace
    stubborn = "import signal,time;signal.signal(signal.SIGTERM,signal.SIG_IGN);print('ready',flush=True);time.sleep(600)"
    # starts a grandchild in its own session (escapes our process group), then exits
    escaper = ("import subprocess,sys,time;"
               "p=subprocess.Popen([sys.executable,'-c','import time;time.sleep(600)'],start_new_session=True);"
               f"open({str(gc_pid_file)!r},'w').write(str(p.pid))")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        with NamespaceLAN(["a", "b"], term_grace=1.0) as lan:
            prefix = lan.prefix
            sleeper = lan.popen("a", [PY, "-c", "import time; time.sleep(600)"])
            st = lan.popen("b", [PY, "-u", "-c", stubborn], stdout=subprocess.PIPE)
            assert st.stdout.readline().strip() == b"ready"
            esc = lan.popen("b", [PY, "-c", escaper])
            assert esc.wait(timeout=20) == 0
            gc_pid = int(gc_pid_file.read_text())
            assert not _pid_gone(gc_pid, timeout=0.1)
            raise RuntimeError("boom")
    elapsed = time.monotonic() - t0
    assert sleeper.returncode == -signal.SIGTERM
    assert st.returncode == -signal.SIGKILL
    _assert_reaped([sleeper, st, esc])
    assert _pid_gone(gc_pid), "escaped grandchild still alive"
    assert not [n for n in _netns_names() if n.startswith(prefix)]
    assert elapsed < 30


def test_setup_failure_halfway_cleans_up(netns_ok, monkeypatch):
    lan = NamespaceLAN(["a", "b", "c"])
    orig = lan._setup_host

    def failing(i, host):
        if i == 2:
            raise NamespaceLANError("injected failure")
        return orig(i, host)

    monkeypatch.setattr(lan, "_setup_host", failing)
    with pytest.raises(NamespaceLANError, match="injected"):
        with lan:
            pass  # pragma: no cover
    assert len(lan._created_ns) == 3  # switch + 2 hosts had been created
    assert not [n for n in _netns_names() if n.startswith(lan.prefix)]
    with pytest.raises(NamespaceLANError):
        lan.popen("a", ["true"])


# Receiver prints bytes received and seconds from accept to EOF; then acks.
RECV = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(30)
t = time.monotonic(); n = 0
for _ in range(1_000_000):
    b = c.recv(1 << 16)
    if not b:
        break
    n += len(b)
dt = time.monotonic() - t
c.sendall(b"k"); c.close()
print(n, dt, flush=True)
"""
SEND = (
    "import socket,sys;s=socket.socket();s.settimeout(30);s.connect((sys.argv[1],int(sys.argv[2])));"
    "s.sendall(b'x'*int(sys.argv[3]));s.shutdown(socket.SHUT_WR);assert s.recv(1)==b'k'"
)
NBYTES = 5 * 1024 * 1024


def _transfer(lan: NamespaceLAN) -> float:
    rcv = lan.popen("b", [PY, "-c", RECV, str(PORT)], stdout=subprocess.PIPE, text=True)
    lan.wait_listening("b", PORT, timeout=10)
    r = lan.run("a", [PY, "-c", SEND, lan.address("b"), str(PORT), str(NBYTES)], timeout=60)
    assert r.returncode == 0, r.stderr
    out, _ = rcv.communicate(timeout=30)
    n, dt = out.split()
    assert int(n) == NBYTES
    return float(dt)


def test_rate_limit_100mbit(netns_ok):
    assert parse_rate("100mbit") == 100_000_000
    with NamespaceLAN(["a", "b"], rate="100mbit") as lan:
        assert lan.shaper in ("netem", "tbf")
        q = lan.run("a", ["tc", "qdisc", "show", "dev", lan.interface("a")], timeout=10).stdout
        assert lan.shaper in q and "100Mbit" in q, q
        shaped = _transfer(lan)
        shaper = lan.shaper
    with NamespaceLAN(["a", "b"]) as lan:
        unshaped = _transfer(lan)
    mbit = NBYTES * 8 / shaped / 1e6
    print(f"shaper={shaper!r}: 5 MiB shaped {shaped:.3f}s (~{mbit:.0f} Mbit/s), "
          f"unshaped {unshaped:.3f}s")
    # 5 MiB at 100 Mbit/s ~ 0.42 s; loose bounds
    assert 0.3 <= shaped < 20
    assert unshaped < shaped
