"""The memory section: the server's peak RSS above its idle baseline on the README model, in
multiples of the model, against the number of clients."""

from __future__ import annotations

import os
import statistics

from .fleet import client_problems

MEMORY_TARGET = 4.0  # x model: server peak RSS above its idle baseline at the largest count


def analyse_memory(run: dict) -> dict:
    server, model_bytes = run["server"], run["model_bytes"]
    above = server["status"]["VmHWM"] - server["baseline"]["VmRSS"]
    # The step that first reached (within 1%) the final peak, and each step's peak over rounds.
    peak_step = next((f"round {r} {label}" for r, label, hwm, _ in server["phases"]
                      if hwm >= 0.99 * above), None)
    by_step: dict[str, float] = {}
    for _, label, hwm, _ in server["phases"]:
        by_step[label] = max(by_step.get(label, 0), hwm / model_bytes)
    return {"clients": run["clients"], "processes": run["processes"], "rounds": run["rounds"],
            "peak_above_baseline_bytes": above, "x_model": above / model_bytes,
            "baseline_bytes": server["baseline"]["VmRSS"], "hwm_reset": server["hwm_reset"],
            "pool_size": server["pool_size"], "pool_peak_in_use": server["pool_peak_in_use"],
            "round_seconds": server["round_seconds"], "peak_step": peak_step,
            "step_peaks_x_model": by_step, "phases": server["phases"], "model_bytes": model_bytes,
            "malloc_env": server["malloc_env"],
            "pyfed_package": os.path.dirname(server["pyfed_file"]), "problems": client_problems(run)}


def print_memory_report(rows: list[dict], model_bytes: int, per_process: int,
                        target: float) -> None:
    print()
    print(f"server memory: README model ({model_bytes / 1e6:.1f} MB float32), echo clients as "
          f"threads ({per_process} per process, each its own socket), {rows[0]['rounds']} rounds; "
          f"peak RSS above the idle baseline (VmHWM - VmRSS as train() began; the bench keeps no "
          f"copy of the weights); target < {target:g}x model at the largest count, flat in clients")
    print(f"{'clients':<8} {'procs':<6} {'peak above baseline':<22} {'x model':<8} {'pool peak':<10} "
          f"{'round s (median)':<17} peak first reached at")
    for r in rows:
        print(f"{r['clients']:<8} {r['processes']:<6} {r['peak_above_baseline_bytes'] / 1e6:>8.0f} MB"
              f"{'':<11} {r['x_model']:<8.2f} {r['pool_peak_in_use']}/{r['pool_size']:<8} "
              f"{statistics.median(r['round_seconds']) if r['round_seconds'] else float('nan'):<17.3f} "
              f"{r['peak_step']}")
    print("peak so far above baseline (x model) as each server step ends, first and last round:")
    for r in rows:
        rounds = sorted({phase[0] for phase in r["phases"]})
        for server_round in dict.fromkeys([rounds[0], rounds[-1]]) if rounds else []:
            print(f"  {r['clients']:>4} clients, round {server_round}: " + ", ".join(
                f"{label} {hwm / r['model_bytes']:.2f}" for phase_round, label, hwm, _
                in r["phases"] if phase_round == server_round))
    largest, smallest = rows[-1], rows[0]
    growth = largest["x_model"] - smallest["x_model"]
    verdict = "ok" if largest["x_model"] < target else "MISSED"
    print(f"target: {largest['x_model']:.2f}x at {largest['clients']} clients, < {target:g}x "
          f"{verdict}" + (f"; {smallest['clients']} -> {largest['clients']} clients: {growth:+.2f}x "
                          f"({'flat' if abs(growth) <= 0.5 else 'GROWS with clients'})"
                          if len(rows) > 1 else ""))
    env = rows[0]["malloc_env"]
    print("allocator: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                           "glibc defaults (dynamic mmap threshold; try MALLOC_MMAP_THRESHOLD_="
                           "1048576 to see how much of the peak is freed memory glibc kept)")
          + f"; pyfed package: {rows[0]['pyfed_package']}")
    for r in rows:
        for problem in r["problems"]:
            print(f"PROBLEM (memory, {r['clients']} clients): {problem}")
