"""The scale section: one round with hundreds or thousands of concurrent numpy clients:
connecting, the round, memory per connection, idle CPU, and a py-spy profile if asked."""

from __future__ import annotations

import os
import statistics

from .fleet import client_problems
from .records import summary


def analyse_scale(run: dict) -> dict:
    server = run["server"]
    connected = server["connected"]
    welcome = [t for c in run["client_processes"] for t in c["welcome_s"]]
    handshake = [t for c in run["client_processes"] for t in c["handshake_s"]]
    hello = [t for c in run["client_processes"] for t in c["hello_s"]]
    starts = server["timings"]["thread_start"]
    above = server["status"]["VmHWM"] - server["baseline"]["VmRSS"]
    connected_above = connected.get("rss", server["baseline"]["VmRSS"]) - server["baseline"]["VmRSS"]
    return {
        "clients": run["clients"], "processes": run["processes"], "params": run["params"],
        "model_bytes": run["model_bytes"], "rounds": run["rounds"],
        "connect_all_seconds": (connected["at"] - run["spawned_at"]) if "at" in connected else None,
        "client_import_seconds": [c["imported_s"] for c in run["client_processes"]],
        "hello_seconds": summary(hello) if hello else None,
        "welcome_seconds": summary(welcome) if welcome else None,
        "handshake_seconds": summary(handshake) if handshake else None,
        "round_seconds": server["round_seconds"], "full_round_seconds": server["timings"]["full_round"],
        "round_cpu_seconds": server["timings"]["round_cpu"],
        "round_cpu_user_seconds": server["timings"].get("round_cpu_user", []),
        "round_cpu_sys_seconds": server["timings"].get("round_cpu_sys", []),
        "round_context_switches": [a + b for a, b in zip(
            server["timings"].get("round_voluntary_switches", []),
            server["timings"].get("round_involuntary_switches", []))],
        "first_result_seconds": server["timings"]["first_result"],
        "last_result_seconds": server["timings"]["last_result"],
        "validate_seconds_total": server["timings"]["validate"],
        "fold_seconds_total": server["timings"]["fold"],
        "thread_start_seconds": ({"total": sum(starts), **summary(starts)} if starts else None),
        "idle_cpu_fraction": connected.get("idle_cpu_fraction"),
        "threads_when_connected": connected.get("threads"), "open_fds": connected.get("open_fds"),
        "max_fd": connected.get("max_fd"),
        "server_peak_rss_bytes": server["status"]["VmHWM"],
        "server_baseline_rss_bytes": server["baseline"]["VmRSS"],
        "peak_above_baseline_bytes": above,
        "connected_above_baseline_bytes": connected_above,
        "per_connection_bytes": connected_above / run["clients"],
        "listen_overflows": run["listen_overflows"], "pool_peak_in_use": server["pool_peak_in_use"],
        "server_cpu_seconds": server["cpu_seconds"], "profile": run["profile"],
        "pyfed_package": os.path.dirname(server["pyfed_file"]),
        "problems": client_problems(run)}


def print_scale_report(rows: list[dict]) -> None:
    for r in rows:
        print()
        print(f"scale: {r['clients']:,} numpy echo clients (threads in {r['processes']} processes, "
              f"each its own socket and handshake), {r['params']:,}-param model "
              f"({r['model_bytes'] / 1e6:.2f} MB), {r['rounds']} round(s)")
        print(f"{'clients':<8} {'connect all s':<14} {'round s':<9} {'server peak RSS':<16} "
              f"{'above baseline':<15} {'per connection':<15} {'idle CPU':<9} participants")
        rounds = ", ".join(f"{s:.2f}" for s in r["round_seconds"]) or "-"
        idle = (f"{100 * r['idle_cpu_fraction']:.0f}% core" if r["idle_cpu_fraction"] is not None
                else "-")
        connect = f"{r['connect_all_seconds']:.2f}" if r["connect_all_seconds"] is not None else "-"
        print(f"{r['clients']:<8} {connect:<14} {rounds:<9} "
              f"{r['server_peak_rss_bytes'] / 1e6:>6.0f} MB{'':<7} "
              f"{r['peak_above_baseline_bytes'] / 1e6:>+6.0f} MB{'':<6} "
              f"{r['per_connection_bytes'] / 1e3:>5.0f} kB{'':<7} {idle:<9} "
              f"{r['problems'] and 'see PROBLEM' or 'all'}")
        print("  connecting: client imports "
              f"{statistics.median(r['client_import_seconds']):.2f} s after spawn; HELLO sent "
              + (f"{r['hello_seconds']['median']:.2f} s median / {r['hello_seconds']['max']:.2f} s last"
                 if r["hello_seconds"] else "-")
              + "; HELLO -> WELCOME "
              + (f"{r['handshake_seconds']['median'] * 1e3:.0f} ms median / "
                 f"{r['handshake_seconds']['max']:.2f} s max" if r["handshake_seconds"] else "-")
              + (f"; accept backlog overflows {r['listen_overflows']}"
                 if r["listen_overflows"] is not None else "")
              + (f"; Thread.start in the accept loop {r['thread_start_seconds']['total']:.2f} s "
                 f"total, {r['thread_start_seconds']['median'] * 1e6:.0f} us median, "
                 f"{r['thread_start_seconds']['max'] * 1e3:.1f} ms max"
                 if r["thread_start_seconds"] else ""))
        if r["round_seconds"]:
            print(f"  round: results from {r['first_result_seconds'][0]:.2f} s to "
                  f"{r['last_result_seconds'][0]:.2f} s after the round began; validate "
                  f"{r['validate_seconds_total'] * 1e3:.0f} ms + fold "
                  f"{r['fold_seconds_total'] * 1e3:.0f} ms in all; server CPU "
                  f"{r['round_cpu_seconds'][0]:.2f} s in round 1 (user "
                  f"{r['round_cpu_user_seconds'][0]:.2f} + system {r['round_cpu_sys_seconds'][0]:.2f},"
                  f" {r['round_context_switches'][0]:,} context switches; "
                  f"{r['server_cpu_seconds']:.2f} s for the whole run); pool peak "
                  f"{r['pool_peak_in_use']}")
        print(f"  server when all were connected: {r['threads_when_connected']} threads, "
              f"{r['open_fds']} open descriptors (highest {r['max_fd']}), "
              f"{r['connected_above_baseline_bytes'] / 1e6:+.0f} MB RSS above baseline; "
              f"pyfed package: {r['pyfed_package']}")
        if r["profile"]:
            p = r["profile"]
            print(f"  py-spy ({p['samples']} thread-samples at 50 Hz, {p['waiting_leaf_samples']} of them "
                  f"in a wait; {p['path']}); top self:")
            for frame, n in p["self"][:8]:
                print(f"    {100 * n / max(1, p['samples']):5.1f}%  {frame}")
            print("  top inclusive pyfed frames (not waiting):")
            for frame, n in p["inclusive"][:8]:
                print(f"    {100 * n / max(1, p['samples']):5.1f}%  {frame}")
        for problem in r["problems"]:
            print(f"PROBLEM (scale, {r['clients']} clients): {problem}")
