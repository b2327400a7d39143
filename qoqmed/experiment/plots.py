"""The study's PNG plots: macro-F1 per domain, training reward and DRPO's scale over RL steps, probe curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .aggregate import metric_series
from .units import WARM


def _binned(points: list[tuple[int, float]], n_bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Mean value per step bin (steps pooled over seeds); rare domains appear in few batches."""
    if not points:
        return np.array([]), np.array([])
    steps = np.array([p[0] for p in points], dtype=float)
    vals = np.array([p[1] for p in points], dtype=float)
    edges = np.linspace(steps.min(), steps.max() + 1e-9, n_bins + 1)
    idx = np.clip(np.digitize(steps, edges) - 1, 0, n_bins - 1)
    xs, ys = [], []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            xs.append(steps[sel].mean())
            ys.append(vals[sel].mean())
    return np.array(xs), np.array(ys)


def _grid(n: int):
    from matplotlib.figure import Figure

    cols = 3
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=110)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def plot_f1_by_domain(res: dict, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    split = "test" if "test" in res["splits"] else next(iter(res["splits"]), None)
    if split is None:
        return None
    t = res["splits"][split]
    doms = [*res["domains"], "rare", "abundant", "overall"]
    names = res["variants"]
    fig = Figure(figsize=(max(9, 1.3 * len(doms)), 4.5), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    x = np.arange(len(doms))
    for i, n in enumerate(names):
        e = t[n]["macro_f1"]
        stats = [e["domains"][d] if d in e["domains"] else e[d] for d in doms]
        means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        errs = [s["std"] or 0.0 for s in stats]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=n)
    ax.set_xticks(x, [f"{d}\n{res['train_share'][d]:.1%}" if d in res["train_share"] else d for d in doms],
                  fontsize=7)
    ax.set_ylabel(f"{split} macro-F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"macro-F1 per domain ({split}; domains by train share; mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(names)))
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_learning_curves(runs: dict, res: dict, path: Path) -> Path | None:
    names = [n for n in res["variants"] if n != WARM]
    series = {n: metric_series(runs, n, "reward/") for n in names}
    doms = [d for d in res["domains"] if any(d in s for s in series.values())]
    if not doms:
        return None
    fig, axes = _grid(len(doms))
    for ax, d in zip(axes, doms):
        for n in names:
            xs, ys = _binned(series[n].get(d, []))
            if len(xs):
                ax.plot(xs, ys, marker=".", label=n)
        ax.set_title(f"{d} ({res['train_share'][d]:.1%} of train)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_ylabel("batch reward", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.suptitle("training reward per domain (mean over seeds, binned by step)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_probe_curves(res: dict, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    probe = res.get("probe")
    if not probe:
        return None
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    for n, p in probe.items():
        if p["curve"]:
            xs, ys = zip(*[(c[0], c[1]) for c in p["curve"]])
            ax.plot(xs, ys, marker=".", label=n, linestyle="--" if n.startswith("drpo") else "-")
    ax.set_xlabel("RL step")
    ax.set_ylabel("probe reward (mean over domains)")
    ax.set_title("probe-set reward per arm (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_drpo_scales(runs: dict, res: dict, path: Path) -> Path | None:
    names = [n for n in res["variants"] if n != WARM and metric_series(runs, n, "mean_abs_scale/")]
    if not names:
        return None
    fig, axes = _grid(len(names))
    for ax, n in zip(axes, names):
        s = metric_series(runs, n, "mean_abs_scale/")
        for d in res["domains"]:
            xs, ys = _binned(s.get(d, []))
            if len(xs):
                ax.plot(xs, ys, marker=".", label=f"{d} ({res['train_share'][d]:.1%})")
        ax.set_yscale("log")
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_ylabel("mean |A / s| (factor on GRPO score)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("DRPO per-domain advantage scale over training (mean over seeds, binned)")
    fig.tight_layout()
    fig.savefig(path)
    return path
