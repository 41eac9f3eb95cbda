"""The overhead section's figures: PyFed's round against the floor, the ratio and its target,
CPU and page faults per round, server memory, and the client start-up line."""

from __future__ import annotations

import os
import statistics
import sys

from .model import LAYERS
from .records import fmt_range, summary

# Issue 5's targets for PyFed's round over the floor; other client counts get the 10-client one.
TARGET_RATIOS = {3: 1.2, 10: 1.3}


def target_ratio(num_clients: int) -> float:
    return TARGET_RATIOS.get(num_clients, TARGET_RATIOS[10])


def analyse(num_clients: int, pyfed: dict, floors: list[dict], model_bytes: int) -> dict:
    server = pyfed["server"]
    measured = server["round_seconds"][1:]
    full = server["timings"]["full_round"][1:]
    floor_by_mode = {f["mode"]: {**f, "summary": summary(f["round_seconds"])} for f in floors}
    best = min(floor_by_mode.values(), key=lambda f: f["summary"]["median"])
    pyfed_summary = summary(measured)
    ratio = pyfed_summary["median"] / best["summary"]["median"]
    # Rounds taken in turn: the median of round-by-round ratios is steadier under drifting load.
    paired = statistics.median(a / b for a, b in zip(measured, best["round_seconds"]))
    peak_above = server["status"]["VmHWM"] - server["baseline"]["VmRSS"]
    hello = [c["hello_s"] for c in pyfed["clients"] if c["hello_s"] is not None]
    tf_anywhere = (server["tensorflow_imported"] or any(c["tensorflow_imported"] for c in pyfed["clients"])
                   or any(f["tensorflow_imported"] for f in floors))
    problems = []
    if not server["weights_ok"]:
        problems.append("PyFed's averaged echoes differ from the global weights")
    if any(p != num_clients for p in server["participants"]):
        problems.append(f"a round had fewer than {num_clients} participants: {server['participants']}")
    if any(c["rounds_trained"] != len(server["round_seconds"]) for c in pyfed["clients"]):
        problems.append("a client did not take part in every round")
    if tf_anywhere:
        problems.append("TensorFlow was imported by a child process")
    med = statistics.median

    def clients_total(per_client: list[list[float]]) -> float:
        return med([sum(values) for values in zip(*per_client)])  # summed per round, median

    costs = {"pyfed": {"server_cpu_s": med(server["timings"]["cpu"][1:]),
                       "clients_cpu_s": clients_total([c["round_cpu"][1:] for c in pyfed["clients"]]),
                       "server_faults": med(server["timings"]["faults"][1:]),
                       "clients_faults": clients_total([c["round_faults"][1:] for c in pyfed["clients"]])}}
    for mode, f in floor_by_mode.items():
        costs[f"floor_{mode}"] = {"server_cpu_s": med(f["server_cpu"]),
                                  "clients_cpu_s": clients_total(f["client_cpu"]),
                                  "server_faults": med(f["server_faults"]),
                                  "clients_faults": clients_total(f["client_faults"])}
    return {
        "clients": num_clients,
        "pyfed_package": os.path.dirname(server["pyfed_file"]),
        "pyfed": {"round_seconds": measured, "warmup_seconds": server["round_seconds"][0],
                  "summary": pyfed_summary,
                  "full_round_seconds": full, "full_round_summary": summary(full),
                  "breakdown_median_seconds": {
                      "validate_update (all clients)": med(server["timings"]["validate"][1:]),
                      "strategy.add (all clients)": med(server["timings"]["fold"][1:]),
                      "strategy.finish": med(server["timings"]["finish"][1:]),
                      "checkpoint (after the round)": med(server["timings"]["checkpoint"][1:])},
                  "bytes_out_per_round": server["bytes_out"][-1],
                  "bytes_in_per_round": server["bytes_in"][-1],
                  "buffer_pool_peak_in_use": server["pool_peak_in_use"]},
        "floor": {mode: {"round_seconds": f["round_seconds"], "warmup_seconds": f["warmup_seconds"],
                         "summary": f["summary"]} for mode, f in floor_by_mode.items()},
        "floor_mode": best["mode"], "ratio": ratio, "paired_ratio_median": paired,
        "target": target_ratio(num_clients),
        "meets_target": ratio <= target_ratio(num_clients),
        "server_rss": {"baseline_bytes": server["baseline"]["VmRSS"],
                       "peak_bytes": server["status"]["VmHWM"], "peak_above_baseline_bytes": peak_above,
                       "peak_above_baseline_x_model": peak_above / model_bytes,
                       "hwm_reset_at_baseline": server["hwm_reset"]},
        "per_round_costs_median": costs,
        "client_hello_seconds": hello,
        "client_imported_seconds": [c["imported_s"] for c in pyfed["clients"]],
        "tensorflow_imported": tf_anywhere,
        "problems": problems,
    }


def print_report(results: dict) -> None:
    model = results["model"]
    med = statistics.median
    print(f"model: {model['params']:,} params, {model['bytes'] / 1e6:.1f} MB (float32), "
          f"{'-'.join(map(str, LAYERS))} dense; {results['rounds']} rounds after 1 warm-up, "
          "PyFed and floor rounds interleaved")
    if results.get("pool_size", 2) != 2:
        print(f"PyFed server: buffer_pool_size={results['pool_size']} (default 2)")
    print(f"{'clients':<8} {'pyfed median [min-max] s':<26} {'floor median [min-max] s':<26} "
          f"{'ratio':<6} {'target':<13} paired")
    for r in results["runs"]:
        floor = r["floor"][r["floor_mode"]]["summary"]
        target = f"<= {r['target']:g} " + ("ok" if r["meets_target"] else "MISSED")
        print(f"{r['clients']:<8} {fmt_range(r['pyfed']['summary']):<26} {fmt_range(floor):<26} "
              f"{r['ratio']:<6.2f} {target:<13} {r['paired_ratio_median']:.2f}")
    print("(ratio: of the medians; paired: median of the round-by-round ratios to that floor,\n"
          " steadier when other load on the machine comes and goes)")
    rss = "; ".join(f"{r['clients']} clients {r['server_rss']['peak_above_baseline_bytes'] / 1e6:.0f} MB "
                    f"({r['server_rss']['peak_above_baseline_x_model']:.1f}x model)"
                    for r in results["runs"])
    print(f"server peak RSS above baseline: {rss}")
    s = results["startup"]
    first = results["runs"][0]
    line = (f"numpy-only client start-up: import {med(s['import_seconds']):.2f} s "
            f"({s['command']}, median of {len(s['import_seconds'])}; bare python "
            f"{med(s['bare_python_seconds']):.2f} s, numpy alone {med(s['numpy_seconds']):.2f} s)")
    if first["client_hello_seconds"]:
        line += (f"; process start -> imports done {med(first['client_imported_seconds']):.2f} s "
                 f"-> HELLO sent {med(first['client_hello_seconds']):.2f} s "
                 f"(median of {first['clients']} clients started together)")
    print(line)
    print("details (medians per measured round):")
    for r in results["runs"]:
        pad = " " * (len(str(r["clients"])) + 12)
        modes = ", ".join(f"{mode} {fmt_range(f['summary'])}" for mode, f in sorted(r["floor"].items()))
        print(f"  {r['clients']} clients: floor by mode: {modes}")
        b = r["pyfed"]["breakdown_median_seconds"]
        print(f"{pad}pyfed round incl. sampling + History and TensorBoard writes "
              f"{r['pyfed']['full_round_summary']['median']:.3f} s; "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in b.items()))
        costs = r["per_round_costs_median"]
        print(f"{pad}CPU ms (server + all clients): " + ", ".join(
            f"{side.replace('_', ' ')} {c['server_cpu_s'] * 1e3:.0f} + {c['clients_cpu_s'] * 1e3:.0f}"
            for side, c in costs.items())
              + "; minor page faults: " + ", ".join(
            f"{side.replace('_', ' ')} {c['server_faults']:.0f} + {c['clients_faults']:.0f}"
            for side, c in costs.items()))
    print(f"machine: {results['cpus']} CPUs, 1-minute load average {results['load_average_start']:.1f} "
          f"at the start and {results['load_average_end']:.1f} at the end (other work competes "
          "for the CPUs)")
    tf = any(r["tensorflow_imported"] for r in results["runs"]) or "tensorflow" in sys.modules
    print(f"tensorflow imported by any process: {'YES' if tf else 'no'}; "
          f"pyfed package: {first['pyfed_package']}")
    for r in results["runs"]:
        for problem in r["problems"]:
            print(f"PROBLEM ({r['clients']} clients): {problem}")
