"""`qoqmed experiment`: the estimator comparison on CLIMB-mini and re-reporting a finished one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import bundled_config, console, fail

experiment_app = typer.Typer(help="Controlled experiments on CLIMB-mini (estimator comparison).",
                             no_args_is_help=True)


@experiment_app.command("compare-estimators")
def experiment_compare_estimators(
    config: Annotated[Path, typer.Argument(help="YAML: data/model/sft/rl/eval sections as a recipe, plus an "
                                                "'experiment' section (seeds, variants, baseline, quick); "
                                                "'default' for the bundled one.")],
    out: Annotated[Path, typer.Option(help="Folder for data, per-seed runs, report.md, results.json, PNGs.")]
    = Path("experiment_out"),
    seeds: Annotated[Optional[int], typer.Option(help="Number of seeds (overrides experiment.seeds).")] = None,
    quick: Annotated[bool, typer.Option(help="Apply the config's experiment.quick overrides (smaller data, "
                                             "shorter training): the minutes-long preset.")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Units trained side by side, each in its own "
                                                               "process (default: one per CPU core).")] = None,
) -> None:
    """Train GRPO, DRPO (each mode) and other baselines from one shared warm start per seed; compare them.

    Per seed, one supervised warm start is trained and every estimator variant then runs RL with the same
    budget from it. All are evaluated on the validation and the held-out test split; OUT/report.md gives
    per-domain macro-F1 and accuracy (mean +- std over seeds), change vs the baseline (GRPO), a rare- vs
    abundant-domain summary, the DRPO variant chosen on validation, learning curves and DRPO's per-domain
    scale factors (PNG). Units run side by side, one process per CPU core (--workers); re-running the same
    command reuses finished units. CONFIG may be `default` for
    the bundled configs/experiment.yaml (3 seeds in under an hour on 2 CPU cores; with --quick, minutes).
    """
    from ..experiment import load_experiment_config, run_compare_estimators

    path = bundled_config("experiment") if str(config) == "default" else config
    cfg = load_experiment_config(path, quick=quick, seeds=seeds)
    run_compare_estimators(cfg, out, workers=workers)


@experiment_app.command("report")
def experiment_report(
    folder: Annotated[Path, typer.Argument(help="The --out folder of an earlier compare-estimators run (its "
                                                "config.yaml, results.json and the units' result files).")],
) -> None:
    """Re-write report.md, results.json and the plots of an estimator study from its units' results.

    Nothing is trained: the units' result files are aggregated again with the run's config.yaml. Timings, machine
    facts and the domains' training shares stay those of the run that wrote results.json.
    """
    from ..experiment import report_compare_estimators

    if not folder.is_dir():
        fail(f"{folder}: no such folder; pass the --out folder of `qoqmed experiment compare-estimators`")
    for name in ("config.yaml", "results.json"):
        if not (folder / name).is_file():
            fail(f"{folder}: no {name}; pass the --out folder of `qoqmed experiment compare-estimators`")
    try:
        results = report_compare_estimators(folder)
    except KeyError as exc:
        fail(f"{folder}: results.json or a unit's result file lacks {exc}; re-run compare-estimators there")
    console.print(f"wrote {folder / 'report.md'}, {folder / 'results.json'} and the plots "
                  f"({len(results['variants'])} variants, seeds {results['context']['seeds']})", markup=False)
