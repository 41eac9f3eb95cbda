#!/usr/bin/env python
"""Compression on a slow LAN: the same federation with compression None, "fp16" and "int8".

    sudo .venv/bin/python scripts/bench_lan.py                 # as root: it builds namespaces
    .venv/bin/python scripts/bench_lan.py --rate 100mbit --rounds 5 --json out.json

The LAN is made of network namespaces joined by veth links to a bridge (tests/netlan.py), each
host's link limited to ``--rate`` (netem where the kernel has it, else a token bucket, tbf). It
runs two federations per codec, every party a process in its own namespace:

* digits: the Keras 64-64-10 MLP, 3 clients, ``--rounds`` rounds: bytes on the wire, median round
  time and final test accuracy;
* README model: 784-500-1000-2000-1000-500-10 (21.6 MB) with 3 numpy echo clients: where the
  link, not training, sets the pace.

Only addresses inside the namespaces it creates are used; every process it starts is ended by
PID and reaped; all waits are bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CODECS = ("none", "fp16", "int8")
README_SHAPES = "784x500,500,500x1000,1000,1000x2000,2000,2000x1000,1000,1000x500,500,500x10,10"


def run_federation(lan, base: Path, name: str, server_argv: list, client_argvs: list,
                   timeout: float) -> tuple[dict, list]:
    from conftest import tagged

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    logs, procs = {}, {}
    try:
        logs["server"] = open(base / f"{name}-server.log", "wb")
        procs["server"] = lan.popen("server", server_argv, stdout=logs["server"],
                                    stderr=subprocess.STDOUT, env=env)
        lan.wait_listening("server", 54321, timeout=90)
        for index, argv in enumerate(client_argvs, start=1):
            host = f"client_{index}"
            logs[host] = open(base / f"{name}-{host}.log", "wb")
            procs[host] = lan.popen(host, argv, stdout=logs[host], stderr=subprocess.STDOUT, env=env)
        codes = {host: proc.wait(timeout=timeout) for host, proc in procs.items()}
    finally:
        for handle in logs.values():
            handle.close()
    outputs = {host: (base / f"{name}-{host}.log").read_text(errors="replace") for host in procs}
    if any(codes.values()):
        raise RuntimeError(f"{name} failed: {codes}\n" + outputs["server"][-3000:])
    clients = [tagged(outputs[h], "CLIENT") for h in outputs if h != "server"]
    return tagged(outputs["server"], "RESULT"), clients


def summarize(result: dict) -> dict:
    history = result["history"]["history"]
    return {"bytes_in": sum(history["bytes_in"]), "bytes_out": sum(history["bytes_out"]),
            "round_median_s": statistics.median(history["round_seconds"]),
            "round_min_s": min(history["round_seconds"]), "round_max_s": max(history["round_seconds"]),
            "accuracy": (result.get("test") or {}).get("accuracy")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--readme-rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from netlan import NamespaceLAN, netns_available

    available, reason = netns_available()
    if not available:
        print(f"cannot build a namespace LAN here: {reason}", file=sys.stderr)
        return 2
    roles = str(ROOT / "tests" / "roles.py")
    python = sys.executable
    results = {"rate": args.rate, "digits": {}, "readme_model": {}}
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"pyfed-bench-lan-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    with NamespaceLAN(["server", "client_1", "client_2", "client_3"], rate=args.rate) as lan:
        results["shaper"] = lan.shaper
        server_ip = lan.address("server")
        for codec in CODECS:
            logdir = base / f"digits-{codec}"
            server = [python, roles, "softmax-server", "--port", "54321", "--multi-system",
                      "--rounds", str(args.rounds), "--logdir", str(logdir), "--compression", codec]
            clients = [[python, roles, "softmax-client", "--server-ip", server_ip, "--port", "54321",
                        "--index", str(i), "--clients", "3", "--logdir", str(logdir)] for i in (1, 2, 3)]
            result, _ = run_federation(lan, base, f"digits-{codec}", server, clients, timeout=300)
            results["digits"][codec] = summarize(result)
            print(f"digits {codec}: {results['digits'][codec]}", flush=True)
        for codec in CODECS:
            logdir = base / f"readme-{codec}"
            server = [python, roles, "numpy-server", "--port", "54321", "--clients", "3",
                      "--rounds", str(args.readme_rounds), "--shapes", README_SHAPES,
                      "--logdir", str(logdir), "--compression", codec, "--multi-system"]
            clients = [[python, roles, "numpy-client", "--server-ip", server_ip, "--port", "54321",
                        "--index", str(i), "--shapes", README_SHAPES, "--logdir", str(logdir)]
                       for i in (1, 2, 3)]
            result, _ = run_federation(lan, base, f"readme-{codec}", server, clients, timeout=600)
            results["readme_model"][codec] = summarize(result)
            print(f"README model {codec}: {results['readme_model'][codec]}", flush=True)

    print(f"\nlinks: {args.rate} per host ({results['shaper']}); 3 clients; bytes both directions\n")
    print("| run | compression | bytes on the wire | vs none | median round [min-max] | final accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run, label in (("digits", "digits (SoftmaxRegression, numpy)"), ("readme_model", "README model, echo")):
        none_bytes = results[run]["none"]["bytes_in"] + results[run]["none"]["bytes_out"]
        for codec in CODECS:
            r = results[run][codec]
            total = r["bytes_in"] + r["bytes_out"]
            accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            print(f"| {label} | {codec} | {total / 1e6:.2f} MB | {none_bytes / total:.2f}x fewer | "
                  f"{r['round_median_s']:.3f} s [{r['round_min_s']:.3f}-{r['round_max_s']:.3f}] | {accuracy} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
