"""PNG plots of a ``python -m bench --json`` result (matplotlib: pip install usniff[bench])."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], outdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    subtitle = f"{m['cores']} cores, kernel {m['kernel']}, {m['date']}"
    if results.get("overhead"):
        loads = [(res["service"], load) for res in results["overhead"]
                 for load in dict.fromkeys(x["workload"] for x in res["rows"])]  # fmt: skip
        configs = [c for c in results["overhead"][0]["rows"] if True]
        names = list(dict.fromkeys(c["config"] for c in configs))
        fig, ax = plt.subplots(figsize=(11, 4.5))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = []
            for service, load in loads:
                res = next(r for r in results["overhead"] if r["service"] == service)
                vals.append(next(x["ratio"] for x in res["rows"]
                                 if x["workload"] == load and x["config"] == name))  # fmt: skip
            xs = [j + i * width for j in range(len(loads))]
            ax.bar(xs, vals, width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(loads))])
        ax.set_xticklabels([f"{s} {load}" for s, load in loads])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.8, color="red", lw=0.8, ls="--", label="target 0.80 (pcapng, -P 1)")
        ax.set_ylabel("throughput / untraced (median)")
        ax.set_title(f"Overhead on the traced service\n{subtitle}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        fig.savefig(outdir / "bench-overhead.png", dpi=110)
        plt.close(fig)
    if results.get("windows"):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        series = [(f"{r['config'].removeprefix('usniff ')}\n{res['workload']}", r["ratios"])
                  for res in results["windows"] for r in res["rows"]]  # fmt: skip
        ax.boxplot([v for _, v in series], showfliers=False)
        for i, (_, v) in enumerate(series, 1):
            ax.scatter([i] * len(v), v, s=6, alpha=0.4, color="tab:blue")
        ax.set_xticks(range(1, len(series) + 1), [name for name, _ in series], fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.97, color="tab:green", lw=0.8, ls="--", label="target 0.97 (filtered out)")
        ax.axhline(0.8, color="red", lw=0.8, ls="--", label="target 0.80 (pcapng, -P 1)")
        ax.set_ylabel("window's throughput / untraced windows either side")
        ax.set_title(f"Overhead in alternating half-second windows of one load\n{subtitle}",
                     fontsize=10)  # fmt: skip
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "bench-windows.png", dpi=110)
        plt.close(fig)
    if results.get("capacity"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, c in zip(axes, results["capacity"], strict=False):
            pts = sorted(c["search"] + c.get("failed_confirm", []) + c["confirm"],
                         key=lambda r: r["rate"])  # fmt: skip
            unit = 1.0 if c["size"] < 1024 else c["size"] / 1e6
            for ok, color, label in ((True, "tab:green", "zero loss"), (False, "tab:red", "loss")):
                sel = [p for p in pts if p["ok"] == ok]
                ax.scatter([p["rate"] * unit for p in sel],
                           [p["lost_bytes"] / max(p["written"], 1) for p in sel],
                           color=color, label=label)  # fmt: skip
            ax.axvline(c["untraced"] * unit, color="grey", ls="--", label="untraced writer")
            ax.set_xlabel("thousand writes/s achieved" if unit == 1.0 else "MB/s achieved")
            if unit == 1.0:
                ax.xaxis.set_major_formatter(lambda x, _pos: f"{x / 1000:.0f}")
            ax.set_ylabel("fraction of bytes lost")
            ax.set_title(f"{c['size']}-byte writes", fontsize=10)
            ax.legend(fontsize=8)
        fig.suptitle(f"Collector capacity, usniff -w pcapng\n{subtitle}", fontsize=10)
        fig.tight_layout()
        fig.savefig(outdir / "bench-capacity.png", dpi=110)
        plt.close(fig)
