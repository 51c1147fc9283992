"""Sizes of the benchmark suites: ``quick`` (under 5 minutes on 2 cores), ``full``, and ``tiny`` (the
smoke test: every section, a few rows, fast simulated calls)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import Workload


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    """Everything a suite run varies. ``latency_scale`` multiplies every simulated time (ttft,
    per_token) and ``slots_scale`` every LLM pool's max_concurrency: the quick suite quarters both
    with the concurrency, which keeps the hop rate (CPU load) of the full suite and quarters the
    time a batch or a long row takes."""

    name: str
    repeats: int = 3
    in_flight: int = 64
    sample_s: float = 0.25               # the run monitor's sampling period
    latency_scale: float = 1.0
    slots_scale: float = 1.0
    rows: dict[str, int] = field(default_factory=lambda: {"coral": 512, "curation": 1024, "tooluse": 256})
    # utilisation: coral, offered concurrency as multiples of the pool's slots
    util_levels: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    util_rows_min: int = 384
    util_repeats: int = 3
    # hop overhead (bench/hops.py)
    hop_rows: int = 512
    hop_hops: int = 20
    hop_in_flight: int = 256
    hop_rows_nocoalesce: int = 256
    hop_lone: bool = True                  # also time a lone row's step, coalescing on and off
    # memory
    mem_levels: tuple[int, ...] = (1000, 5000, 10000)
    hold_s: float = 25.0
    # offloading
    off_rows: int = 128
    off_in_flight: int = 64
    off_repeats: int = 3
    off_variants: tuple[str, ...] = ("reads_last", "reads_all")
    # scale model
    scale_nodes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 31)
    scale_workloads: tuple[str, ...] = ("coral", "curation", "tooluse")
    scale_warm_s: float = 40.0
    scale_measure_s: float = 60.0
    scale_traces: int = 2000

    def overrides(self, wl: Workload, ir: dict) -> dict[str, dict]:
        """Per-model ``sim`` patches that apply the suite's latency and slot scales."""
        out: dict[str, dict] = {}
        for m, model in ir["models"].items():
            sim = model["sim"]
            patch: dict = {}
            if self.latency_scale != 1.0:
                patch["ttft_s"] = sim["ttft_s"] * self.latency_scale
                patch["per_token_s"] = sim["per_token_s"] * self.latency_scale
            if self.slots_scale != 1.0 and m in wl.llm_models:
                patch["max_concurrency"] = max(1, round(sim["max_concurrency"] * self.slots_scale))
            if patch:
                out[m] = patch
        return out


SUITES: dict[str, SuiteConfig] = {
    "full": SuiteConfig("full"),
    "quick": SuiteConfig(
        "quick", repeats=1, in_flight=16, latency_scale=0.25, slots_scale=0.25,
        rows={"coral": 48, "curation": 96, "tooluse": 32},
        util_levels=(0.5, 1.0, 4.0), util_rows_min=96, util_repeats=1,
        hop_rows=256, hop_hops=10, hop_in_flight=128, hop_rows_nocoalesce=128, hop_lone=False,
        hold_s=8.0, off_rows=48, off_in_flight=24, off_repeats=1, off_variants=("reads_last",),
        scale_nodes=(1, 8, 31), scale_workloads=("coral",), scale_warm_s=10.0, scale_measure_s=10.0,
        scale_traces=500),
    "tiny": SuiteConfig(
        "tiny", repeats=1, in_flight=8, sample_s=0.05, latency_scale=0.1, slots_scale=0.125,
        rows={"coral": 16, "curation": 24, "tooluse": 8},
        util_levels=(1.0, 2.0), util_rows_min=24, util_repeats=1,
        hop_rows=32, hop_hops=4, hop_in_flight=16, hop_rows_nocoalesce=16, hop_lone=False,
        mem_levels=(20, 60), hold_s=2.0, off_rows=6, off_in_flight=6, off_repeats=1, off_variants=("reads_last",),
        scale_nodes=(1, 2), scale_workloads=("coral",), scale_warm_s=3.0, scale_measure_s=3.0, scale_traces=100),
}
