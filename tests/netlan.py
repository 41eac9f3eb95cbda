"""Network-namespace "LAN" harness for multi-process network tests.

Builds a small switched LAN out of Linux network namespaces::

    <prefix>-sw   : "switch" namespace holding a bridge  <prefix>br
    <prefix>-h<i> : one namespace per host; veth <prefix>h<i> (host side,
                    address .<i+1>) paired with <prefix>b<i> (switch side,
                    enslaved to the bridge)

Nothing is created in the caller's (root) network namespace: the bridge and
all veth ends live in namespaces created here, so the LAN addresses exist only
inside them.  Everything is removed again on exit (also when setup fails
halfway), and every process started through :meth:`NamespaceLAN.popen` /
:meth:`NamespaceLAN.run` is terminated (SIGTERM, grace period, SIGKILL) and
reaped.  Any other process still living in one of the LAN's namespaces (e.g. a
grandchild that escaped its process group) is signalled through a pidfd after
checking that it really is inside one of *our* namespaces.

Requires root, ``ip`` (iproute2) and, for ``rate=``, ``tc``.

Usage::

    from netlan import NamespaceLAN, netns_available

    ok, why = netns_available()
    with NamespaceLAN(["server", "c1", "c2"], rate="100mbit") as lan:
        p = lan.popen("server", [sys.executable, "srv.py"], stdout=f, stderr=f)
        lan.wait_listening("server", 5000, timeout=10)
        r = lan.run("c1", [sys.executable, "cli.py", lan.address("server")], timeout=30)
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import warnings
import weakref
from typing import Iterable, Sequence

__all__ = ["NamespaceLAN", "NamespaceLANError", "netns_available", "parse_rate"]

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_IFNAMSIZ = 15  # max interface name length (IFNAMSIZ - 1)
_HOST_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NETNS_DIR = "/run/netns"


class NamespaceLANError(RuntimeError):
    """Raised when the LAN cannot be built or cleaned up."""


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK):
            return cand
    return None


IP = _which("ip")
TC = _which("tc")


def _run(argv: Sequence[str], timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run a short admin command (ip/tc) with a hard timeout."""
    try:
        cp = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run kills + reaps the child
        raise NamespaceLANError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    if check and cp.returncode != 0:
        raise NamespaceLANError(
            f"command failed (rc={cp.returncode}): {' '.join(argv)}: {cp.stderr.strip()}"
        )
    return cp


def _new_prefix() -> str:
    """'pf' + 4-digit pid + 4 hex chars: fixed width (10) so prefixes never nest."""
    return f"pf{os.getpid() % 10000:04d}{secrets.token_hex(2)}"


def _list_netns() -> list[str]:
    cp = _run([IP, "netns", "list"], check=False)
    # lines look like "name" or "name (id: 3)"
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def netns_available() -> tuple[bool, str]:
    """(True, "ok") if we can build namespace LANs here, else (False, reason).

    Checks root, presence of ``ip``, and that a throw-away, uniquely named
    namespace can be created, can hold a bridge and a veth pair, and can be
    deleted again.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, f"not running as root (euid={getattr(os, 'geteuid', lambda: '?')()})"
    if IP is None:
        return False, "iproute2 'ip' binary not found"
    name = f"pfprobe{os.getpid() % 10000:04d}{secrets.token_hex(2)}"
    try:
        cp = _run([IP, "netns", "add", name], timeout=10, check=False)
    except NamespaceLANError as e:
        return False, f"'ip netns add' hung: {e}"
    if cp.returncode != 0:
        return False, f"'ip netns add' failed: {cp.stderr.strip() or cp.returncode}"
    try:
        for argv, what in (
            ([IP, "-n", name, "link", "add", "pfbr", "type", "bridge"], "bridge"),
            ([IP, "-n", name, "link", "add", "pfva", "type", "veth", "peer", "name", "pfvb"], "veth"),
        ):
            cp = _run(argv, timeout=10, check=False)
            if cp.returncode != 0:
                return False, f"cannot create a {what} inside a namespace: {cp.stderr.strip()}"
        return True, "ok"
    except NamespaceLANError as e:
        return False, str(e)
    finally:
        _run([IP, "netns", "delete", name], timeout=10, check=False)


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps)?\s*$", re.I)
_MULT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_rate(rate: str | int | float) -> int:
    """tc-style rate -> bits/s.  '100mbit' -> 100_000_000; 'kbps' etc. are BYTES/s (tc semantics);
    a bare number means bit/s."""
    if isinstance(rate, (int, float)):
        bits = float(rate)
    else:
        m = _RATE_RE.match(rate)
        if not m:
            raise ValueError(f"unparseable rate {rate!r} (use e.g. '100mbit', '20mbit', '1gbit')")
        num, mult, unit = m.groups()
        bits = float(num) * _MULT[mult.lower()] * (8 if (unit or "").lower() == "bps" else 1)
    if bits < 8000:
        raise ValueError(f"rate {rate!r} is implausibly low (< 8kbit)")
    return int(bits)


def _root_ns_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks that the caller's namespace already routes / owns (best effort)."""
    nets: list[ipaddress.IPv4Network] = []
    for argv in ([IP, "-4", "-j", "route", "show", "table", "all"], [IP, "-4", "-j", "addr", "show"]):
        try:
            data = json.loads(_run(argv, check=False).stdout or "[]")
        except (ValueError, NamespaceLANError):
            continue
        for entry in data:
            cands = [entry.get("dst")]
            for ai in entry.get("addr_info", []) or []:
                if ai.get("local") and ai.get("prefixlen") is not None:
                    cands.append(f"{ai['local']}/{ai['prefixlen']}")
            for c in cands:
                if not c or c == "default":
                    continue
                try:
                    nets.append(ipaddress.ip_network(c, strict=False))
                except ValueError:
                    pass
    return [n for n in nets if n.version == 4]


_LIVE: "weakref.WeakSet[NamespaceLAN]" = weakref.WeakSet()
_LIVE_SUBNETS: set[ipaddress.IPv4Network] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _cleanup_leftovers() -> None:  # pragma: no cover - safety net only
    for lan in list(_LIVE):
        try:
            lan.close()
        except Exception:
            pass


class NamespaceLAN:
    """A switched IPv4 LAN of network namespaces.  Use as a context manager.

    hosts   : host names (unique, [A-Za-z0-9_.-]); host i gets address .(i+1)
    subnet  : IPv4 private network; default: random 10.203.X.0/24 that does not
              overlap anything routed in the caller's namespace or another live LAN
    rate    : optional link rate, tc syntax ('100mbit').  Applied to BOTH ends of
              every host's veth pair (host egress = upload, switch-side egress =
              download), i.e. each host has a full-duplex link of that speed.
              Uses 'netem rate' if the kernel has sch_netem, else falls back to
              'tbf' (see .shaper).
    term_grace : seconds between SIGTERM and SIGKILL during cleanup (default 5).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        subnet: str | None = None,
        rate: str | int | None = None,
        *,
        term_grace: float = 5.0,
    ) -> None:
        hosts = list(hosts)
        if not hosts:
            raise ValueError("need at least one host")
        for h in hosts:
            if not isinstance(h, str) or not _HOST_RE.match(h):
                raise ValueError(f"bad host name {h!r} (allowed: [A-Za-z0-9_.-]{{1,64}})")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"duplicate host names in {hosts}")
        if len(hosts) > 250:
            raise ValueError("at most 250 hosts")
        self.hosts: list[str] = hosts
        self._subnet_arg = subnet
        self.rate_bits: int | None = parse_rate(rate) if rate is not None else None
        self.rate = rate
        self.term_grace = float(term_grace)
        self.prefix: str = _new_prefix()
        self.switch_ns = f"{self.prefix}-sw"
        self.bridge = f"{self.prefix}br"
        self._ns = {h: f"{self.prefix}-h{i}" for i, h in enumerate(hosts)}
        self._ifname = {h: f"{self.prefix}h{i}" for i, h in enumerate(hosts)}
        self._swifname = {h: f"{self.prefix}b{i}" for i, h in enumerate(hosts)}
        for n in [self.bridge, *self._ifname.values(), *self._swifname.values()]:
            assert len(n) <= _IFNAMSIZ, n
        self.subnet: ipaddress.IPv4Network | None = None
        self._addr: dict[str, str] = {}
        self.shaper: str | None = None  # 'netem' | 'tbf' | None
        self._created_ns: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._own_pgrp: dict[int, bool] = {}
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self.cleanup_errors: list[str] = []

    # ------------------------------------------------------------------ info
    def address(self, host: str) -> str:
        """IPv4 address of `host` on the LAN (a str like '10.203.57.2')."""
        self._check_host(host)
        return self._addr[host]

    def netns(self, host: str) -> str:
        """Name of the network namespace of `host` (usable with `ip netns exec`)."""
        self._check_host(host)
        return self._ns[host]

    def interface(self, host: str) -> str:
        """Name of `host`'s LAN interface (inside its namespace)."""
        self._check_host(host)
        return self._ifname[host]

    @property
    def namespaces(self) -> list[str]:
        """All namespace names belonging to this LAN (switch first)."""
        return [self.switch_ns, *self._ns.values()]

    @property
    def processes(self) -> list[subprocess.Popen]:
        with self._lock:
            return list(self._procs)

    def _check_host(self, host: str) -> None:
        if host not in self._ns:
            raise KeyError(f"unknown host {host!r}; hosts: {self.hosts}")

    # ----------------------------------------------------------------- setup
    def __enter__(self) -> "NamespaceLAN":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_on_error=exc_type is None)

    def start(self) -> "NamespaceLAN":
        if self._started:
            raise NamespaceLANError("NamespaceLAN already started")
        if IP is None:
            raise NamespaceLANError("iproute2 'ip' not found")
        if self.rate_bits is not None and TC is None:
            raise NamespaceLANError("rate= given but 'tc' not found")
        self._started = True
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self.subnet = self._pick_subnet()
            hosts_iter = self.subnet.hosts()
            for h in self.hosts:
                self._addr[h] = str(next(hosts_iter))
            self._setup_switch()
            for i, h in enumerate(self.hosts):
                self._setup_host(i, h)
            if self.rate_bits is not None:
                for h in self.hosts:
                    self._shape(self._ns[h], self._ifname[h])
                    self._shape(self.switch_ns, self._swifname[h])
            self._wait_links_up(timeout=10.0)
        except BaseException:
            self.close(raise_on_error=False)
            raise
        return self

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        need = len(self.hosts)
        if self._subnet_arg is not None:
            net = ipaddress.ip_network(self._subnet_arg, strict=True)
            if net.version != 4 or not net.is_private or net.is_loopback:
                raise ValueError(f"subnet {net} must be a private (RFC1918) IPv4 network")
            if net.num_addresses - 2 < need:
                raise ValueError(f"subnet {net} too small for {need} hosts")
            with _LIVE_LOCK:
                _LIVE_SUBNETS.add(net)
            return net
        taken = _root_ns_networks()
        candidates = list(range(1, 255))
        random.SystemRandom().shuffle(candidates)
        with _LIVE_LOCK:
            for x in candidates:  # bounded: at most 254 candidates
                net = ipaddress.IPv4Network(f"10.203.{x}.0/24")
                if any(net.overlaps(t) for t in taken) or net in _LIVE_SUBNETS:
                    continue
                _LIVE_SUBNETS.add(net)
                return net
        raise NamespaceLANError("no free 10.203.X.0/24 subnet")

    def _ip(self, ns: str, *args: str) -> subprocess.CompletedProcess:
        return _run([IP, "-n", ns, *args])

    def _add_ns(self, ns: str) -> None:
        # record before creating: a half-done 'add' is still cleaned up
        self._created_ns.append(ns)
        _run([IP, "netns", "add", ns])

    def _setup_switch(self) -> None:
        sw = self.switch_ns
        self._add_ns(sw)
        self._ip(sw, "link", "set", "lo", "up")
        # STP off (default) -> ports forward immediately
        self._ip(sw, "link", "add", self.bridge, "type", "bridge", "stp_state", "0")
        self._ip(sw, "link", "set", self.bridge, "up")

    def _setup_host(self, i: int, host: str) -> None:
        ns, ifn, swif = self._ns[host], self._ifname[host], self._swifname[host]
        self._add_ns(ns)
        self._ip(ns, "link", "set", "lo", "up")
        # create the pair inside the switch ns, peer goes straight into the host ns
        self._ip(self.switch_ns, "link", "add", swif, "type", "veth", "peer", "name", ifn, "netns", ns)
        self._ip(self.switch_ns, "link", "set", swif, "master", self.bridge)
        self._ip(self.switch_ns, "link", "set", swif, "up")
        assert self.subnet is not None
        self._ip(ns, "addr", "add", f"{self._addr[host]}/{self.subnet.prefixlen}", "dev", ifn)
        self._ip(ns, "link", "set", ifn, "up")

    def _shape(self, ns: str, dev: str) -> None:
        assert self.rate_bits is not None
        rate = f"{self.rate_bits}bit"
        if self.shaper in (None, "netem"):
            cp = _run([TC, "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", "rate", rate,
                       "limit", "10000"], check=False)
            if cp.returncode == 0:
                self.shaper = "netem"
                return
            if self.shaper == "netem" or "unknown" not in cp.stderr.lower():
                raise NamespaceLANError(f"tc netem on {ns}/{dev} failed: {cp.stderr.strip()}")
        # sch_netem not in this kernel: token bucket, ~4 ms of burst, 100 ms queue
        burst = max(16000, self.rate_bits // 8 // 250)
        _run([TC, "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
              "burst", str(burst), "latency", "100ms"])
        self.shaper = "tbf"

    def _wait_links_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = dict(self._ifname)
        for _ in range(int(timeout / 0.05) + 1):
            for h, ifn in list(pending.items()):
                out = self._ip(self._ns[h], "-o", "link", "show", "dev", ifn).stdout
                if "LOWER_UP" in out and "state UP" in out:
                    del pending[h]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if pending:
            raise NamespaceLANError(f"links not up after {timeout}s: {sorted(pending)}")

    # ------------------------------------------------------------- processes
    def popen(self, host: str, argv: Sequence[str | os.PathLike], **kw) -> subprocess.Popen:
        """Start `argv` inside `host`'s namespace via `ip netns exec` and track it.

        All subprocess.Popen keyword arguments are passed through (env, cwd,
        stdout, stderr, text, ...).  The environment is inherited unless env= is
        given.  Defaults: stdin=DEVNULL, start_new_session=True (so cleanup can
        signal the whole process group).  The returned Popen's pid is the
        program itself (`ip netns exec` execs it directly).
        """
        self._check_host(host)
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a sequence of arguments, not a string")
        if kw.get("shell"):
            raise ValueError("shell=True not supported")
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        full = [IP, "netns", "exec", self._ns[host], *[a if isinstance(a, str) else os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]]
        with self._lock:
            if not self._started or self._closed:
                raise NamespaceLANError("LAN is not running")
            p = subprocess.Popen(full, **kw)
            self._procs.append(p)
            self._own_pgrp[p.pid] = bool(kw["start_new_session"]) or bool(kw.get("process_group") == 0)
        return p

    def run(
        self,
        host: str,
        argv: Sequence[str | os.PathLike],
        timeout: float = 30.0,
        *,
        input: str | bytes | None = None,
        check: bool = False,
        **kw,
    ) -> subprocess.CompletedProcess:
        """Run a short command in `host`'s namespace; capture stdout/stderr (text by default).

        On timeout the process (group) is killed, reaped and TimeoutExpired is raised.
        """
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        if "text" not in kw and "universal_newlines" not in kw and "encoding" not in kw:
            kw["text"] = True
        if input is not None:
            kw["stdin"] = subprocess.PIPE
        p = self.popen(host, argv, **kw)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop([p], grace=1.0)
            try:
                out, err = p.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                out = err = None
            raise subprocess.TimeoutExpired(p.args, timeout, output=out, stderr=err)
        cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check:
            cp.check_returncode()
        return cp

    def wait_listening(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Block until some socket in `host`'s namespace LISTENs on TCP `port`.

        Reads /proc/net/tcp{,6} from inside the namespace: no packets are sent.
        Raises TimeoutError.
        """
        needle = f":{int(port):04X} "
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            cp = self.run(host, ["cat", "/proc/net/tcp", "/proc/net/tcp6"], timeout=5)
            for line in cp.stdout.splitlines()[1:]:
                f = line.split()
                # fields: sl local_address rem_address st ...; st 0A == LISTEN
                if len(f) > 3 and (f[1] + " ").endswith(needle) and f[3] == "0A":
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")

    # ---------------------------------------------------------------- cleanup
    def _signal_tracked(self, p: subprocess.Popen, sig: int) -> None:
        # returncode None => not reaped yet => pid (and pgid if we made one) still ours
        if p.returncode is not None:
            return
        try:
            if self._own_pgrp.get(p.pid):
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover
            p.send_signal(sig)

    def _stop(self, procs: Iterable[subprocess.Popen], grace: float, close_pipes: bool = False) -> list[int]:
        """SIGTERM, wait `grace`, SIGKILL, reap.  Returns pids that could not be reaped."""
        procs = list(procs)
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            self._signal_tracked(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in alive:
            if p.poll() is None:
                self._signal_tracked(p, signal.SIGKILL)
        stuck = []
        for p in alive:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                stuck.append(p.pid)
        # close pipes we created so no fds leak
        for p in procs if close_pipes else ():
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
        return stuck

    def _ns_inode(self, ns: str) -> int | None:
        try:
            return os.stat(os.path.join(_NETNS_DIR, ns)).st_ino
        except OSError:
            return None

    def _sweep_ns_processes(self, grace: float) -> list[int]:
        """Kill any process still inside one of our namespaces (not our children,
        e.g. escaped grandchildren).  Uses pidfds + a namespace-inode check so we
        can never signal a recycled pid outside our namespaces."""
        inodes = {i for i in (self._ns_inode(n) for n in self._created_ns) if i is not None}
        if not inodes:
            return []

        def ours() -> dict[int, int]:
            found: dict[int, int] = {}
            for ns in self._created_ns:
                cp = _run([IP, "netns", "pids", ns], check=False)
                for tok in cp.stdout.split():
                    if tok.isdigit() and int(tok) != os.getpid():
                        found[int(tok)] = 1
            return found

        def signal_pid(pid: int, sig: int) -> bool:
            try:
                fd = os.pidfd_open(pid)
            except (ProcessLookupError, OSError):
                return False
            try:
                try:
                    ino = os.stat(f"/proc/{pid}/ns/net").st_ino
                except OSError:
                    return False
                if ino not in inodes:
                    return False  # pid recycled to a process outside our LAN: leave it alone
                signal.pidfd_send_signal(fd, sig)
                return True
            except ProcessLookupError:
                return False
            finally:
                os.close(fd)

        pids = ours()
        if not pids:
            return []
        for pid in pids:
            signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _ in range(int(grace / 0.05) + 1):
            pids = ours()
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid in pids:
            signal_pid(pid, signal.SIGKILL)
        for _ in range(100):  # <= ~5 s
            pids = ours()
            if not pids:
                break
            time.sleep(0.05)
        return sorted(pids)

    def close(self, raise_on_error: bool = False) -> None:
        """Stop all processes, delete all namespaces.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs)
        errors: list[str] = []
        try:
            stuck = self._stop(procs, self.term_grace, close_pipes=True)
            if stuck:
                errors.append(f"could not reap pids {stuck}")
        except Exception as e:  # keep going: namespaces must go regardless
            errors.append(f"stopping processes: {e!r}")
        try:
            left = self._sweep_ns_processes(self.term_grace)
            if left:
                errors.append(f"processes still inside LAN namespaces: {left}")
        except Exception as e:
            errors.append(f"sweeping namespace processes: {e!r}")
        # delete host namespaces first, then the switch; then anything else with our prefix
        to_delete = [n for n in self._created_ns if n != self.switch_ns]
        to_delete += [n for n in self._created_ns if n == self.switch_ns]
        for ns in to_delete:
            try:
                _run([IP, "netns", "delete", ns], check=False)
            except Exception as e:
                errors.append(f"deleting {ns}: {e!r}")
        try:
            leftover = [n for n in _list_netns() if n.startswith(self.prefix + "-")]
            for ns in leftover:
                _run([IP, "netns", "delete", ns], check=False)
            leftover = [n for n in _list_netns() if n.startswith(self.prefix + "-")]
            if leftover:
                errors.append(f"namespaces left: {leftover}")
        except Exception as e:
            errors.append(f"listing namespaces: {e!r}")
        with _LIVE_LOCK:
            _LIVE.discard(self)
            if self.subnet is not None:
                _LIVE_SUBNETS.discard(self.subnet)
        self.cleanup_errors = errors
        if errors:
            msg = f"NamespaceLAN {self.prefix} cleanup problems: " + "; ".join(errors)
            if raise_on_error:
                raise NamespaceLANError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return (f"NamespaceLAN(prefix={self.prefix!r}, subnet={self.subnet}, hosts={self.hosts}, "
                f"rate={self.rate!r}, shaper={self.shaper!r})")
