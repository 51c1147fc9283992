"""The table of ratios of a suite's results (printed, and as Markdown for docs/benchmarks.md)."""

from __future__ import annotations

from .stats import fmt_spread


def rows_of(res: dict) -> list[tuple[str, str, str, str]]:
    """``(item, what, value, note)`` rows for every section present in ``res["sections"]``."""
    s = res["sections"]
    out: list[tuple[str, str, str, str]] = []
    for wl, d in (s.get("scheduling") or {}).items():
        r = d["ratios"]
        pm = d["per_mode"]
        cpu = ", ".join(f"{m} {fmt_spread(pm[m]['run_cpu_util'])}" for m in pm)
        out += [
            ("1", f"{wl}: p2p / batch, tokens/s", fmt_spread(r["p2p/batch tokens_per_s"]), f"{d['rows']} rows, {d['in_flight']} in flight"),
            ("1", f"{wl}: p2p / batch, rows/s", fmt_spread(r["p2p/batch rows_per_s"]), ""),
            ("1", f"{wl}: p2p / batch, steady tokens/s", fmt_spread(r["p2p/batch steady_tokens_per_s"]), "10-80% of the run"),
            ("1", f"{wl}: p2p / central, tokens/s", fmt_spread(r["p2p/central tokens_per_s"]), ""),
            ("1", f"{wl}: p2p / central, rows/s", fmt_spread(r["p2p/central rows_per_s"]), ""),
            ("1", f"{wl}: p2p tokens/s (utilisation)",
             f"{fmt_spread(pm['p2p']['tokens_per_s'], 0)} ({fmt_spread(pm['p2p']['utilisation'])})", f"run CPU util: {cpu}"),
        ]
    u = s.get("utilisation")
    if u:
        for lv in u["levels"]:
            out.append(("2", f"coral utilisation, {lv['in_flight']} in flight ({lv['x_slots']:g} x {u['slots']} slots)",
                        f"{fmt_spread(lv['steady_utilisation'])} steady / {fmt_spread(lv['utilisation'])} whole run",
                        f"run CPU {fmt_spread(lv['run_cpu_util'])}, machine busy {fmt_spread(lv['machine_busy'])}"))
    o = s.get("overhead")
    if o:
        sm = o["summary"]
        hp = sm["hops_per_s"]
        out += [
            ("3", "zero-latency workflow / raw relay, hops/s", fmt_spread(sm["ratios"]["workflow/raw"]),
             f"{fmt_spread(hp['workflow'], 0)} vs {fmt_spread(hp['raw_relay'], 0)} hops/s, {o['in_flight']} in flight, ~{o['message_bytes']} B"),
            ("3", "  same, no coalescing / raw relay", fmt_spread(sm["ratios"]["workflow_no_coalescing/raw"]), ""),
            ("3", "  same, central / raw relay", fmt_spread(sm["ratios"]["workflow_central/raw"]), ""),
            ("3", "  same, central, no coalescing / raw relay",
             fmt_spread(sm["ratios"].get("workflow_central_no_coalescing/raw", {})), ""),
            ("3", "coalesced relay (transport only) / raw relay", fmt_spread(sm["ratios"]["coalesced_relay/raw"]), ""),
            ("3", "latency coalescing adds, lone message p50 / p99 (ms)",
             f"{fmt_spread(sm['added_latency_ms']['lone_p50'])} / {fmt_spread(sm['added_latency_ms']['lone_p99'])}", "relay"),
            ("3", f"latency coalescing adds, {o['in_flight']} in flight p50 / p99 (ms)",
             f"{fmt_spread(sm['added_latency_ms']['loaded_p50'])} / {fmt_spread(sm['added_latency_ms']['loaded_p99'])}",
             "negative: coalescing is faster under load"),
            ("3", "CPU per hop, all run processes (ms): coalesced / not / central",
             " / ".join(fmt_spread(sm["cpu_per_hop_ms"][w]["all_run_processes"])
                        for w in ("workflow", "workflow_no_coalescing", "workflow_central")), ""),
            ("3", "CPU per hop at the coordinator (ms): coalesced / not",
             " / ".join(fmt_spread(sm["cpu_per_hop_ms"][w].get("coordinator", {}))
                        for w in ("workflow_central", "workflow_central_no_coalescing") if w in sm["cpu_per_hop_ms"]), ""),
        ]
    m = s.get("memory")
    if m:
        out.append(("4", "memory per in-flight row (slope)", f"{m['bytes_per_row_slope'] / 1024:.2f} KiB",
                    f"fixed {m['fixed_bytes'] / 2**20:.0f} MiB"))
        for lv in m["levels"]:
            out.append(("4", f"  at {lv['rows']} in flight ({lv['waiting_at_once']} waiting at once)",
                        f"{(lv['bytes_per_row'] or 0) / 1024:.2f} KiB/row", f"RSS {lv['rss_bytes'] / 2**20:.0f} MiB"))
    off = s.get("offload")
    if off:
        for v, d in off["variants"].items():
            b = d["bytes_per_hop"]
            out.append(("5", f"offloading, {v}: bytes per hop inline / offloaded", fmt_spread(d["inline/offload bytes"]),
                        f"{fmt_spread(b['inline'], 0)} B vs {fmt_spread(b['offload'], 0)} B"))
            out.append(("5", f"offloading, {v}: hops/s offloaded / inline", fmt_spread(d["offload/inline hops_per_s"]), ""))
    sc = s.get("scale_model")
    if sc:
        for wl, f in sc["findings"].items():
            for k, v in f.items():
                if "/" in k:
                    out.append(("6", f"MODEL {wl}: {k}", "-" if v is None else f"{v:.2f}", ""))
            top = f"> {sc['nodes'][-1]}"
            out.append(("6", f"MODEL {wl}: coordinator saturates at (nodes): batched / per message / + step logic",
                        f"{f['coordinator_saturates_at_nodes'] or top} / "
                        f"{f.get('coordinator_per_message_saturates_at_nodes') or top} / "
                        f"{f['hub_with_step_logic_saturates_at_nodes'] or top}",
                        f"caps {f['central_hops_per_s_cap']:,.0f} / {f.get('central_per_message_hops_per_s_cap', 0):,.0f} / "
                        f"{f['central_full_hops_per_s_cap']:,.0f} hops/s; driver cap {f['driver_rows_per_s_cap']:,.0f} rows/s"))
    return out


def markdown(res: dict) -> str:
    lines = ["| # | what | value: median (min-max, n) | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows_of(res)]
    return "\n".join(lines) + "\n"


def text(res: dict) -> str:
    rows = rows_of(res)
    w = max((len(r[1]) for r in rows), default=10)
    v = max((len(r[2]) for r in rows), default=10)
    git = res.get("git") or {}
    head = (f"suite {res['suite']}: {res['machine']['cpus']} CPUs, load average at start "
            f"{res['machine']['loadavg'][0]}, commit {str(git.get('commit', '?'))[:10]}"
            f"{' (snapshot)' if git.get('snapshot') else ' (uncommitted changes)' if git.get('dirty') else ''}")
    return "\n".join([head] + [f"{a:>2}  {b:<{w}}  {c:<{v}}  {d}" for a, b, c, d in rows]) + "\n"
