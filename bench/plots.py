"""The suite's plots (matplotlib, PNG): utilisation vs offered concurrency, throughput by mode per
workload, and the scale model's curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODE_LABELS = {"p2p": "row-level P2P", "batch": "batch (--schedule batch)", "central": "central (--orchestrator central)"}
MODE_COLORS = {"p2p": "tab:blue", "batch": "tab:orange", "central": "tab:green", "central_full": "tab:red",
               "p2p_per_message": "tab:blue", "central_per_message": "tab:green"}
SCALE_LABELS = {"p2p": "P2P (agents route)", "central": "central hub, routing only",
                "central_full": "central hub also running the step logic",
                "p2p_per_message": "P2P, per-message costs (no coalescing)",
                "central_per_message": "central hub, per-message costs (no coalescing)"}


def _err(s: dict) -> tuple[float, list[list[float]]]:
    med = s["median"] or 0.0
    lo = med - (s["min"] if s["min"] is not None else med)
    hi = (s["max"] if s["max"] is not None else med) - med
    return med, [[lo], [hi]]


def occupancy_bound(u: dict, in_flight: int, slowdown: float = 0.5) -> float:
    """The utilisation if every row in flight were decoding all the time: ``k = min(in flight, slots)``
    sequences at once, each faster than on a full replica (the sim's batching slowdown grows with k)."""
    m = u["levels"][0]["runs"][0]["models"]["llm"]
    t, pt, ttft = m["mean_tokens"], m["per_token_s"], m["ttft_s"]
    f = min(1.0, in_flight / u["slots"])
    return f * (ttft + t * pt * (1 + slowdown)) / (ttft + t * pt * (1 + slowdown * f))


def utilisation_plot(u: dict, path: Path, suite: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [lv["in_flight"] for lv in u["levels"]]
    for key, label, style in (("steady_utilisation", "utilisation, steady state (10-80% of tokens)", "o-"),
                              ("utilisation", "utilisation, whole run (incl. ramp and drain)", "s--"),
                              ("utilisation_nominal", "tokens/s ÷ nominal slots/per_token", "^:")):
        meds = [lv[key]["median"] for lv in u["levels"]]
        lo = [m - (lv[key]["min"] or m) if m is not None else 0 for m, lv in zip(meds, u["levels"], strict=True)]
        hi = [(lv[key]["max"] or m) - m if m is not None else 0 for m, lv in zip(meds, u["levels"], strict=True)]
        ax.errorbar(xs, [m if m is not None else float("nan") for m in meds], yerr=[lo, hi], fmt=style,
                    capsize=3, label=label)
    ax.plot(xs, [occupancy_bound(u, x) for x in xs], "-", color="black", alpha=0.25, lw=3,
            label="bound: every row in flight always decoding")
    cpu = [lv["run_cpu_util"]["median"] for lv in u["levels"]]
    ax.plot(xs, cpu, "x-", color="grey", alpha=0.7, label="CPU used by the run (fraction of all cores)")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(0.9, color="red", lw=0.8, ls="--", label="target 0.9")
    ax.axvline(u["slots"], color="purple", lw=0.8, ls=":", label=f"fleet slots = {u['slots']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("offered concurrency (rows in flight, log scale)")
    ax.set_ylabel("fraction of fleet capacity")
    ax.set_title(f"Utilisation vs offered concurrency: coral on {u['slots']} simulated slots ({suite} suite)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_plot(sched: dict, path: Path, suite: str) -> Path:
    names = list(sched)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7), squeeze=False)
    for j, wl in enumerate(names):
        pm = sched[wl]["per_mode"]
        for i, (metric, unit) in enumerate((("tokens_per_s", "LLM tokens/s"), ("rows_per_s", "rows/s"))):
            ax = axes[i][j]
            for k, mode in enumerate(pm):
                med, err = _err(pm[mode][metric])
                ax.bar(k, med, yerr=err, capsize=4, color=MODE_COLORS[mode], label=MODE_LABELS[mode])
                ax.text(k, med, f"{med:,.0f}" if med >= 100 else f"{med:.1f}", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(pm)))
            ax.set_xticklabels(list(pm), fontsize=9)
            ax.set_ylabel(unit)
            r = sched[wl]["ratios"][f"p2p/batch {metric}"]["median"]
            c = sched[wl]["ratios"][f"p2p/central {metric}"]["median"]
            ax.set_title(f"{wl}: p2p/batch {r:.2f}x, p2p/central {c:.2f}x" if r and c else wl, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper right")
    first = sched[names[0]]
    fig.suptitle(f"Throughput by mode at equal concurrency ({first['in_flight']} rows in flight; median, "
                 f"bars = min-max over repeats; {suite} suite)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scale_plot(sm: dict, path: Path, suite: str) -> Path:
    names = list(sm["curves"])
    fig, axes = plt.subplots(2, len(names), figsize=(max(7.5, 5.2 * len(names)), 8.2), squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    styles = {"p2p": ("o-", 0.5), "central": ("o-", 1.0), "central_full": ("o-", 1.0),
              "p2p_per_message": ("s--", 0.6), "central_per_message": ("s--", 0.6)}
    widths = {"p2p": 5.0}    # drawn wide underneath: the hub curves lie on it until they saturate
    for j, wl in enumerate(names):
        ax, bx = axes[0][j], axes[1][j]
        for mode, pts in sm["curves"][wl].items():
            xs = [p["nodes"] for p in pts]
            fmt, alpha = styles[mode]
            ax.plot(xs, [p["tokens_per_s"] / 1e3 for p in pts], fmt, color=MODE_COLORS[mode], alpha=alpha,
                    lw=widths.get(mode, 1.5), label=SCALE_LABELS[mode])
            if mode.startswith("central"):
                bx.plot(xs, [p["utilisation"]["coordinator"] for p in pts], fmt, color=MODE_COLORS[mode],
                        alpha=alpha, label=f"coordinator: {SCALE_LABELS[mode]}")
        p2p = sm["curves"][wl]["p2p"]
        bx.plot([p["nodes"] for p in p2p], [p["utilisation"]["driver"] for p in p2p], "^:", color="tab:purple",
                label="driver (admission + completions), P2P")
        f = sm["findings"][wl]
        for key, color in (("coordinator_saturates_at_nodes", "tab:green"),
                           ("hub_with_step_logic_saturates_at_nodes", "tab:red"),
                           ("coordinator_per_message_saturates_at_nodes", "tab:green")):
            sat = f.get(key)
            if sat:
                for a in (ax, bx):
                    a.axvline(sat, color=color, lw=0.8, ls=":" if "per_message" in key else "--")
        ax.set_ylabel("LLM tokens/s (thousands)")
        ax.set_title(f"{wl}", fontsize=11)
        ax.grid(alpha=0.3)
        bx.axhline(1.0, color="black", lw=0.6)
        bx.set_ylim(0, 1.08)
        bx.set_ylabel("CPU busy (fraction of its one core)")
        bx.set_xlabel("nodes (8 GPUs and 400 rows in flight each)")
        bx.grid(alpha=0.3)
    h1, l1 = axes[0][0].get_legend_handles_labels()
    h2, l2 = axes[1][0].get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("MODEL, not a measurement: discrete-event simulation calibrated with CPU costs\n"
                 f"measured on this machine ({suite} suite). Vertical lines: where a hub's coordinator is 95% busy.", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(res: dict, out_dir: Path) -> list[Path]:
    s, suite = res["sections"], res["suite"]
    paths = []
    if s.get("utilisation"):
        paths.append(utilisation_plot(s["utilisation"], out_dir / f"{suite}_utilisation.png", suite))
    if s.get("scheduling"):
        paths.append(throughput_plot(s["scheduling"], out_dir / f"{suite}_throughput_by_mode.png", suite))
    if s.get("scale_model"):
        paths.append(scale_plot(s["scale_model"], out_dir / f"{suite}_scale_model.png", suite))
    return paths
