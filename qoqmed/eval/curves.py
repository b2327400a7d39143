"""Training curves: mean reward per clinical domain over RL steps."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def plot_rl_curves(rl_logs: dict, path: str | Path, window: int = 5) -> Path | None:
    """Line per domain of the batch-mean reward (running mean over ``window`` batches that held the domain)."""
    from matplotlib.figure import Figure

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for entry in rl_logs.get("domains", []):
        for key, value in entry.items():
            if key.startswith("reward/"):
                series[key.split("/", 1)[1]].append((entry["step"], value))
    if not series:
        return None
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.add_subplot()
    for domain, points in sorted(series.items()):
        steps = np.array([p[0] for p in points])
        values = np.array([p[1] for p in points])
        k = min(window, len(values))
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=f"{domain} (n={len(values)})")
    return _finish(fig, ax, f"mean reward (running mean of {window} batches)", "RL reward by clinical domain", path)


def _finish(fig, ax, ylabel: str, title: str, path: str | Path) -> Path:
    """Reward axes in [0, 1] against the RL step, legend, saved as ``path``."""
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_probe_curves(rl_logs: dict, path: str | Path) -> Path | None:
    """Line per domain of the probe-set reward (fixed training questions, sampled as in RL) at each probe step,
    with their unweighted mean in black: the learning curve of what RL optimises, free of batch composition."""
    from matplotlib.figure import Figure

    entries = sorted(rl_logs.get("probe_domains", []), key=lambda e: e["step"])
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for entry in entries:
        for key, value in entry.items():
            if key.startswith("reward/") and value is not None:
                series[key.split("/", 1)[1]].append((entry["step"], float(value)))
    if not series:
        return None
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.add_subplot()
    for domain, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", alpha=0.6, label=domain)
    mean = [(e["step"], float(np.mean([v for k, v in e.items() if k.startswith("reward/") and v is not None])))
            for e in entries if any(k.startswith("reward/") for k in e)]
    ax.plot([m[0] for m in mean], [m[1] for m in mean], color="black", linewidth=2.5, marker="o",
            label="mean over domains")
    return _finish(fig, ax, "probe-set reward (sampled as in RL)",
                   "Probe set: the same training questions scored every few steps", path)
