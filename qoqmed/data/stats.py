"""Counts of a record set per domain, dataset and label, and how imbalanced the domains are."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from .domains import DOMAINS
from .schema import Record


def record_stats(records: Sequence[Record]) -> dict:
    """Rows per domain / dataset / label (a multi-label row counts once per label) and domain imbalance."""
    domains = Counter(r.domain for r in records)
    datasets: dict[str, Counter] = defaultdict(Counter)
    dataset_domain: dict[str, str] = {}
    for r in records:
        dataset_domain[r.dataset] = r.domain
        datasets[r.dataset].update(r.labels)
    order = [d for d in DOMAINS if d in domains] + sorted(d for d in domains if d not in DOMAINS)
    n = len(records)
    return {
        "n": n,
        "domains": {d: {"rows": domains[d], "share": domains[d] / n} for d in order},
        "datasets": {ds: {"domain": dataset_domain[ds], "rows": sum(1 for r in records if r.dataset == ds),
                          "labels": dict(sorted(c.items(), key=lambda kv: -kv[1])),
                          # most / least frequent label of the dataset
                          "label_imbalance": max(c.values()) / min(c.values()) if c else None}
                     for ds, c in sorted(datasets.items())},
        # largest / smallest domain: how much more often the model sees the dominant domain
        "imbalance_ratio": max(domains.values()) / min(domains.values()) if domains else None,
        "largest_domain": max(order, key=lambda d: domains[d]) if domains else None,
        "smallest_domain": min(order, key=lambda d: domains[d]) if domains else None,
        "with_images": sum(1 for r in records if r.images),
        "with_volumes": sum(1 for r in records if r.volumes),
        "with_ecg": sum(1 for r in records if r.ecg),
        "with_boxes": sum(1 for r in records if r.boxes),
        # rows whose clinical notes are in the row's `ehr` (qoqmed.data.modalities), and rows with no file at all
        "with_notes": sum(1 for r in records if r.extra.get("ehr")),
        "text_only": sum(1 for r in records if not (r.images or r.volumes or r.ecg)),
        # domains outside the built-in nine (qoqmed.data.domains): trained and evaluated like the others
        "user_domains": sorted(d for d in domains if d not in DOMAINS),
    }


def plot_domain_counts(stats: dict, path: str | Path, title: str = "records per domain") -> Path:
    """Horizontal bar chart of rows per domain (log scale when the domains differ by more than 20x)."""
    from matplotlib.figure import Figure

    names = list(stats["domains"])
    rows = [stats["domains"][d]["rows"] for d in names]
    fig = Figure(figsize=(7, 0.45 * len(names) + 1.2), dpi=120)
    ax = fig.add_subplot()
    bars = ax.barh(names[::-1], rows[::-1], color="#4C72B0")
    for bar, value in zip(bars, rows[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value} ({value / stats['n']:.1%})",
                va="center", fontsize=8)
    if rows and max(rows) > 20 * max(min(rows), 1):
        ax.set_xscale("log")
    ax.set_xlabel("rows")
    ax.set_title(f"{title} (n={stats['n']}, largest/smallest = {stats['imbalance_ratio']:.1f})")
    ax.margins(x=0.25)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
