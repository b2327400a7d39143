"""The study's report: report.md (tables of the aggregated numbers) and results.json, with the plots."""

from __future__ import annotations

import json
from pathlib import Path

from .aggregate import METRICS
from .plots import plot_drpo_scales, plot_f1_by_domain, plot_learning_curves, plot_probe_curves
from .units import WARM


def write_outputs(res: dict, runs: dict, out: Path) -> dict[str, Path]:
    """results.json, report.md and the plots."""
    paths = {"results": out / "results.json", "report": out / "report.md"}
    plots = {"f1_by_domain": plot_f1_by_domain(res, out / "f1_by_domain.png"),
             "learning_curves": plot_learning_curves(runs, res, out / "learning_curves.png"),
             "drpo_scales": plot_drpo_scales(runs, res, out / "drpo_scales.png"),
             "probe_curves": plot_probe_curves(res, out / "probe_curves.png")}
    res["plots"] = {k: v.name for k, v in plots.items() if v is not None}
    paths["results"].write_text(json.dumps(res, indent=1, default=str))
    split = "test" if "test" in res["splits"] else next(iter(res["splits"]))
    lines = [
        "# qoqmed: estimator comparison on CLIMB-mini", "",
        "Synthetic data and a tiny model: this checks the *mechanism* of DRPO against GRPO and other baselines at "
        "laptop scale. It says nothing about clinical ability.", "",
        *_what_was_run(res),
        f"## Summary ({split} split)", "", *_summary_table(res, split), "",
        *_paired_warm_section(res, split), *_probe_section(res), *_token_mode_section(res, split),
        *_selection_section(res, split), *_scale_section(res), *_per_domain_sections(res, split), *_plot_section(res),
    ]
    paths["report"].write_text("\n".join(lines) + "\n")
    return paths


def _what_was_run(res: dict) -> list[str]:
    c = res["context"]
    lines = [
        "## What was run", "",
        f"- seeds: {', '.join(map(str, c['seeds']))}; one supervised warm start per seed, shared by every "
        f"estimator of that seed; each estimator then gets the same RL budget from it",
        f"- estimators: {', '.join(f'{n} ({json.dumps(v)})' for n, v in c['variants'].items())}",
    ]
    if c["skipped_variants"]:  # written by earlier versions, which skipped estimators they lacked
        lines.append(f"- skipped (estimator not available in this install): {c['skipped_variants']}")
    return lines + [
        f"- RL budget (common to all): {json.dumps(c['rl'])}",
        f"- warm start: {json.dumps({k: c['sft'][k] for k in ('epochs', 'batch_size', 'learning_rate')})}; "
        f"model {json.dumps(c['model'])} ({_f((c['n_params'] or 0) / 1e6, 2)}M parameters)",
        f"- data: {json.dumps(c['data'])}: {c['train_rows']} train rows; evaluation rows "
        f"{json.dumps(c['split_rows'])} (val/test have equal rows per domain)",
        f"- warm start / RL rows: warm_start_share {c.get('warm_start_share', 1.0)}: the warm start fits "
        f"{c.get('warm_start_rows', c['train_rows'])} rows, RL trains on {c.get('rl_rows', c['train_rows'])} "
        + ("disjoint rows (stratified by domain)" if c.get("warm_rl_disjoint") and c.get('warm_start_share', 1) < 1
           else "rows (the same rows)")
        + f"; per domain warm {json.dumps(c.get('warm_start_rows_per_domain', {}))}, "
          f"RL {json.dumps(c.get('rl_rows_per_domain', {}))}",
        f"- rare domains (train share < {res['rare_share_threshold']:.0%}): {', '.join(res['rare_domains']) or '-'}; "
        f"abundant: {', '.join(res['abundant_domains'])}",
        f"- machine: {c['machine']}; load average at start {c['load_average_start']}, at end "
        f"{c['load_average_end']} (other processes may have shared the CPU); {c.get('workers', 1)} worker "
        f"process(es) with {c.get('threads_per_worker', '?')} torch thread(s) each",
        f"- time: training + evaluation of all {c['units']} units {c['units_seconds_total']:.0f} s "
        f"({c['units_seconds_total'] / 60:.1f} min; mean training time per unit: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in c["mean_seconds"].items()) + "); this invocation "
        f"{c['wall_seconds']:.0f} s wall ({c['wall_seconds'] / 60:.1f} min), {c['units_reused']} of {c['units']} "
        "units reused from an earlier one",
        "",
        "Values are mean ± sample standard deviation over seeds. Rare / abundant: per seed the unweighted mean over "
        "the group's domains. Relative change: 100 × (estimator − baseline) / baseline of the seed means. Paired Δ: "
        "per seed, the estimator's overall macro-F1 minus the baseline's, from the same warm start.", "",
        *(["Identical evaluations (every seed and split): "
           + "; ".join(" = ".join(pair) for pair in res["identical_results"])
           + ". A constant factor on all advantages (RLOO's is Dr.GRPO's times G/(G-1)) does not change an "
             "Adam update, so such runs coincide.", ""] if res.get("identical_results") else []),
    ]


def _selection_section(res: dict, split: str) -> list[str]:
    sel = res.get("selected_drpo")
    if not sel:
        return []
    t = res["splits"][split][sel["variant"]]["macro_f1"]["overall"]
    return ["## Choosing the default DRPO variant (validation split only)", "",
            "| DRPO variant | val overall macro-F1 (mean ± std) | val rare-domain macro-F1 |", "|---|---|---|",
            *[f"| {n} | {_f(v)}" + (f" ± {sel['val_std'][n]:.3f}" if sel["val_std"].get(n) is not None
                                    else "") + f" | {_f(sel['val_rare'].get(n))} |"
              for n, v in sel["val"].items()], "",
            f"Selected by {sel['by']}: **{sel['variant']}** (its {split} overall macro-F1: {_ms(t)}).", ""]


def _scale_section(res: dict) -> list[str]:
    if not res.get("drpo_scale"):
        return []
    doms = res["domains"]
    return ["## DRPO per-domain scale (mean |A / s| over training: the factor DRPO puts on the GRPO score)",
            "", "| variant | " + " | ".join(f"{d} ({res['train_share'][d]:.1%})" for d in doms) + " |",
            "|" + "---|" * (len(doms) + 1),
            *[f"| {n} | " + " | ".join(_f(v.get(d), 2) for d in doms) + " |"
              for n, v in res["drpo_scale"].items()], ""]


def _per_domain_sections(res: dict, split: str) -> list[str]:
    lines = []
    for key, title in METRICS:
        lines += [f"## {title} per domain ({split} split; train share in brackets)", "",
                  *_metric_table(res, split, key), ""]
    lines += [f"## macro-F1 change vs {res['context']['baseline']} per domain ({split} split)", "",
              *_rel_table(res, split, "macro_f1"), ""]
    if "val" in res["splits"] and split != "val":
        lines += ["## macro-F1 per domain (validation split)", "", *_metric_table(res, "val", "macro_f1"), ""]
    return lines


def _plot_section(res: dict) -> list[str]:
    lines = ["## Plots", ""]
    captions = {"f1_by_domain": "Test macro-F1 per domain (mean ± std over seeds)",
                "learning_curves": "Training reward per domain over RL steps (mean over seeds, binned)",
                "drpo_scales": "DRPO mean |advantage scale| per domain over training",
                "probe_curves": "Probe-set reward over RL steps (mean over seeds and domains, per arm)"}
    for k, name in res["plots"].items():
        lines += [f"![{captions[k]}]({name})", ""]
    return lines



def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ms(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s['mean']:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def _metric_table(res: dict, split: str, key: str) -> list[str]:
    t = res["splits"][split]
    doms = res["domains"]
    head = ["estimator", *[f"{d} ({res['train_share'][d]:.1%})" for d in doms], "rare", "abundant", "**overall**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in res["variants"]:
        e = t[n][key]
        lines.append("| " + " | ".join([n, *[_ms(e["domains"][d]) for d in doms], _ms(e["rare"]), _ms(e["abundant"]),
                                        f"**{_ms(e['overall'])}**"]) + " |")
    return lines


def _rel_table(res: dict, split: str, key: str) -> list[str]:
    t = res["splits"][split]
    doms = res["domains"]
    head = ["estimator", *doms, "rare", "abundant", "**overall**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in res["variants"]:
        rel = t[n][key]["rel_vs_baseline"]
        lines.append("| " + " | ".join([n, *[_pct(rel["domains"][d]) for d in doms], _pct(rel["rare"]),
                                        _pct(rel["abundant"]), f"**{_pct(rel['overall'])}**"]) + " |")
    return lines


def _summary_table(res: dict, split: str) -> list[str]:
    t = res["splits"][split]
    base = res["context"]["baseline"]
    lines = [f"| estimator | overall macro-F1 | rare-domain macro-F1 | abundant-domain macro-F1 | "
             f"overall change vs {base} | rare change vs {base} | paired Δ overall F1 vs {base} (seeds won) | "
             f"paper bal. acc. | accuracy | mean IoU | boxes per answer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in res["variants"]:
        e = t[n]["macro_f1"]
        p = t[n]["paired_f1_diff"]
        paired = "-" if n == base or p["mean"] is None else (
            f"{p['mean']:+.3f}" + (f" ± {p['std']:.3f}" if p["std"] is not None else "") + f" ({p['wins']}/{p['n']})")
        lines.append(f"| {n} | {_ms(e['overall'])} | {_ms(e['rare'])} | {_ms(e['abundant'])} | "
                     f"{_pct(e['rel_vs_baseline']['overall'])} | {_pct(e['rel_vs_baseline']['rare'])} | {paired} | "
                     f"{_ms(t[n]['paper_balanced_accuracy']['overall'])} | {_ms(t[n]['exact_match']['overall'])} | "
                     f"{_ms(t[n]['iou_mean'])} | {_ms(t[n]['boxes_per_answer'])} |")
    return lines


def _paired_warm_section(res: dict, split: str) -> list[str]:
    per = res.get("paired_vs_warm", {}).get(split)
    if not per:
        return []
    seeds = res["context"]["seeds"]
    lines = [f"## After RL minus the warm start ({split} split, overall macro-F1, paired by seed)", "",
             "| arm | paired Δ mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " | seeds above |",
             "|" + "---|" * (len(seeds) + 3)]
    for n, p in per.items():
        lines.append(f"| {n} | " + ("-" if p["mean"] is None else f"{p['mean']:+.3f}"
                                     + (f" ± {p['std']:.3f}" if p["std"] is not None else ""))
                     + " | " + " | ".join("-" if v is None else f"{v:+.3f}" for v in p["values"])
                     + f" | {p['wins']}/{p['n']} |")
    return lines + [""]


def _probe_section(res: dict) -> list[str]:
    probe = res.get("probe")
    if not probe:
        return []
    seeds = [str(s) for s in res["context"]["seeds"]]
    lines = ["## Probe reward at step 0 vs last step, per arm and seed", "",
             "The probe set: a fixed set of RL training questions per domain, sampled as in RL (rollouts, "
             "temperature) at step 0 (the warm start) and every `probe_steps`; reward = unweighted mean over "
             "domains.", "",
             "| arm | " + " | ".join(f"seed {s}: start → end" for s in seeds) + " | mean rise | rises on every "
             "seed? |", "|" + "---|" * (len(seeds) + 3)]
    for n, p in probe.items():
        cells = []
        for s in seeds:
            e = p["per_seed"].get(s)
            cells.append("-" if e is None else f"{e['start']:.3f} → {e['end']:.3f} (step {e['end_step']})")
        r = p["rise"]
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + ("-" if r["mean"] is None else f"{r['mean']:+.3f}")
                     + f" | {'yes' if p['rises_every_seed'] else 'no'} |")
    return lines + [""]


def _token_rows(tm: dict) -> str:
    rows = next((e.get("train_rows") for e in tm["modes"].values() if e.get("train_rows")), None) or {}
    return f"warm start {rows.get(WARM, '-')}, RL {rows.get(tm['variant'], '-')}"


def _token_mode_section(res: dict, split: str) -> list[str]:
    tm = res.get("ecg_token_modes")
    if not tm or not tm["modes"]:
        return []
    v = tm["variant"]
    lines = [f"## ECG token modes (ECG domain only, {split} split, macro-F1)", "",
             f"Per mode and seed a warm start and the {v} arm, both trained on the ECG rows only (the same rows "
             f"for every mode: {_token_rows(tm)}), so the modes differ in the ECG encoder alone; the main "
             f"comparison's model uses {res['context'].get('model_ecg_token_mode')}.", "",
             f"| ECG token mode | tokens per record | warm start | {v} | paired RL gain | train s (warm / RL) |",
             "|---|---|---|---|---|---|"]
    for mode, e in tm["modes"].items():
        if split not in e:
            continue
        t = e[split]
        sec = e["seconds"]
        lines.append(f"| {mode}{' (main)' if e['main_model_mode'] else ''} | {e['tokens']} | {_ms(t[WARM])} | "
                     f"{_ms(t[v])} | " + ("-" if t["paired_rl_gain"]["mean"] is None
                                           else f"{t['paired_rl_gain']['mean']:+.3f}")
                     + f" | {_f(sec.get(WARM), 0)} / {_f(sec.get(v), 0)} |")
    return lines + [""]
