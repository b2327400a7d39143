"""qoqmed experiment compare-estimators: config handling, aggregation, and one end-to-end run at toy size."""

import json
import os

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from qoqmed.cli import app, bundled_config
from qoqmed.experiment import load_experiment_config, report_compare_estimators
from qoqmed.data.climb_mini import generate_climb_mini
from qoqmed.data.schema import load_records
from qoqmed.experiment.aggregate import aggregate, probe_summary
from qoqmed.experiment.units import WARM, split_warm_rl

runner = CliRunner()

# The bundled experiment's sizes with everything shrunk; `quick` shrinks it further, as the bundled quick preset does.
TOY = {
    "seed": 0,
    "data": {"synthetic": {"n_train": 90, "n_val": 18, "n_test": 27, "min_per_domain": 2}},
    "model": {"init": "tiny", "hidden_size": 64, "intermediate_size": 128, "vision_depth": 1},
    "sft": {"epochs": 2, "batch_size": 8},
    "rl": {"num_generations": 2, "batch_size": 4, "max_steps": 4, "max_completion_length": 32,
           "probe_steps": 2, "probe_per_domain": 1},
    "eval": {"batch_size": 32, "max_new_tokens": 32},
    "experiment": {
        "seeds": 3,
        "warm_start_share": 0.5,
        "ecg_token_modes": ["per_lead", "pooled"],  # each: an ECG-only warm start + arm per seed
        "ecg_token_settings": {"rl": {"max_steps": 1}},
        "variants": {"drgrpo": {"estimator": "drgrpo"}, "grpo": {"estimator": "grpo"},  # baseline moves first
                     "drpo-paper": {"estimator": "drpo", "drpo_mode": "paper"},
                     "drpo-reference": {"estimator": "drpo", "drpo_mode": "reference"}},
        "quick": {"sft": {"epochs": 1}, "rl": {"max_steps": 2}, "experiment": {"seeds": 1}},
    },
}


def _write(tmp_path, raw) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Config


def test_bundled_config_and_quick_preset():
    full = load_experiment_config(bundled_config("experiment"))
    quick = load_experiment_config(bundled_config("experiment"), quick=True)
    assert full.seeds == 3 and full.baseline == "grpo"
    assert {"grpo", "drgrpo", "drpo-paper", "drpo-reference"} <= set(full.variants)
    assert {v.get("drpo_mode") for v in full.variants.values() if v["estimator"] == "drpo"} == {"paper", "reference", "bounded"}
    assert full.warm_start_share < 1.0 and full.ecg_token_modes == ["pooled", "per_lead", "patch"]
    assert quick.ecg_token_modes == []
    assert quick.seeds < full.seeds
    assert quick.recipe.rl["max_steps"] < full.recipe.rl["max_steps"]
    assert quick.recipe.data.synthetic["n_train"] < full.recipe.data.synthetic["n_train"]
    assert quick.recipe.rl["num_generations"] == full.recipe.rl["num_generations"]  # merged, not replaced
    assert load_experiment_config(bundled_config("experiment"), quick=True, seeds=5).seeds == 5


@pytest.mark.parametrize("change, match", [
    ({"experiment": {"sedes": 2}}, "unknown key"),
    ({"experiment": {"baseline": "ppo"}}, "baseline"),
    ({"experiment": {"variants": {"a": {"drpo_mode": "paper"}}}}, "estimator"),
    ({"experiment": {"seeds": 0}}, "seeds"),
    ({"bogus": {}}, "unknown config section"),
    # an estimator or RL key the trainer lacks is an error naming the variant, not a skip
    ({"experiment": {"variants": {"odd": {"estimator": "no-such-estimator"}}}}, "variants.odd: unknown estimator"),
    ({"experiment": {"variants": {"grpo": {"estimator": "grpo"}, "typo": {"estimator": "drpo", "drpo_mdoe": "x"}}}},
     r"variants.typo: unknown RL key\(s\) \['drpo_mdoe'\]"),
    ({"experiment": {"variants": {"grpo": {"estimator": "grpo"}, "bad": {"estimator": "drpo", "drpo_mode": "x"}}}},
     "variants.bad: .*drpo_mode"),
    ({"experiment": {"warm_start_share": 0.0}}, "warm_start_share"),
    ({"experiment": {"ecg_token_modes": ["per_token"]}}, "ecg_token_modes"),
    ({"experiment": {"ecg_token_variant": "nope"}}, "ecg_token_variant"),
    ({"experiment": {"ecg_token_settings": {"eval": {}}}}, "ecg_token_settings"),
])
def test_config_errors(tmp_path, change, match):
    raw = {**TOY, **{k: v for k, v in change.items() if k != "experiment"}}
    raw["experiment"] = {**TOY["experiment"], **change.get("experiment", {})}
    with pytest.raises(ValueError, match=match):
        load_experiment_config(_write(tmp_path, raw))


def test_quick_needs_a_quick_section(tmp_path):
    raw = {**TOY, "experiment": {k: v for k, v in TOY["experiment"].items() if k != "quick"}}
    with pytest.raises(ValueError, match="quick"):
        load_experiment_config(_write(tmp_path, raw), quick=True)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation on hand-made numbers


def _metrics(f1: dict[str, float]) -> dict:
    doms = {d: {"macro_f1": v, "paper_balanced_accuracy": v, "exact_match": v / 2} for d, v in f1.items()}
    overall = {k: sum(m[k] for m in doms.values()) / len(doms) for k in ("macro_f1", "paper_balanced_accuracy",
                                                                         "exact_match")}
    return {"overall": {**overall, "iou_mean": 0.5}, "domains": doms}


def _unit(estimator: str, val: dict, test: dict) -> dict:
    return {"settings": {"rl": {"estimator": estimator}}, "metrics": {"val": _metrics(val), "test": _metrics(test)},
            "seconds": 1.0, "eval_seconds": 1.0, "curves": []}


def test_aggregate_means_changes_groups_and_val_selection():
    shares = {"ct": 0.9, "mri": 0.1 - 1e-9, "ultrasound": 1e-9}
    runs = {
        WARM: {0: _unit("-", {"ct": .1, "mri": .1, "ultrasound": .1}, {"ct": .1, "mri": .1, "ultrasound": .1}),
               1: _unit("-", {"ct": .1, "mri": .1, "ultrasound": .1}, {"ct": .1, "mri": .1, "ultrasound": .1})},
        "grpo": {0: _unit("grpo", {"ct": .8, "mri": .2, "ultrasound": .2}, {"ct": .8, "mri": .2, "ultrasound": .2}),
                 1: _unit("grpo", {"ct": .6, "mri": .2, "ultrasound": .4}, {"ct": .6, "mri": .4, "ultrasound": .2})},
        # a is better on val, b on test: the selection must follow val
        "drpo-a": {0: _unit("drpo", {"ct": .8, "mri": .6, "ultrasound": .6}, {"ct": .8, "mri": .3, "ultrasound": .3}),
                   1: _unit("drpo", {"ct": .8, "mri": .6, "ultrasound": .6}, {"ct": .6, "mri": .3, "ultrasound": .3})},
        "drpo-b": {0: _unit("drpo", {"ct": .1, "mri": .1, "ultrasound": .1}, {"ct": .9, "mri": .9, "ultrasound": .9}),
                   1: _unit("drpo", {"ct": .1, "mri": .1, "ultrasound": .1}, {"ct": .9, "mri": .9, "ultrasound": .9})},
    }
    runs["rloo"] = runs["grpo"]  # a variant that comes out exactly the same is flagged
    res = aggregate(runs, shares, 0.2, "grpo", {"seeds": [0, 1], "baseline": "grpo"})
    assert res["identical_results"] == [["grpo", "rloo"]]
    assert res["domains"] == ["ct", "mri", "ultrasound"]
    assert res["rare_domains"] == ["mri", "ultrasound"] and res["abundant_domains"] == ["ct"]
    t = res["splits"]["test"]
    g = t["grpo"]["macro_f1"]
    assert g["domains"]["ct"]["mean"] == pytest.approx(0.7) and g["domains"]["ct"]["std"] == pytest.approx(0.1414, 1e-3)
    assert g["rare"]["values"] == pytest.approx([0.2, 0.3])
    a = t["drpo-a"]["macro_f1"]
    assert a["rel_vs_baseline"]["rare"] == pytest.approx(100 * (0.3 - 0.25) / 0.25)
    assert a["rel_vs_baseline"]["domains"]["ct"] == pytest.approx(0.0)
    assert t["grpo"]["macro_f1"]["rel_vs_baseline"]["overall"] == pytest.approx(0.0)
    assert t["drpo-b"]["paired_f1_diff"]["wins"] == 2 and t["drpo-a"]["paired_f1_diff"]["n"] == 2
    assert t["drpo-a"]["exact_match"]["overall"]["mean"] == pytest.approx(a["overall"]["mean"] / 2)
    assert res["selected_drpo"]["variant"] == "drpo-a"


# ----------------------------------------------------------------------------------------------------------------
# End to end at toy size: the --quick path of the CLI, then a re-run that reuses every finished unit


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    cfg = _write(root, TOY)
    out = root / "out"
    result = runner.invoke(app, ["experiment", "compare-estimators", cfg, "--quick", "--seeds", "2", "--out",
                                 str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return root, cfg, out


def test_report_files_and_structure(toy_run):
    _, _, out = toy_run
    res = json.loads((out / "results.json").read_text())
    variants = ["warm start", "grpo", "drgrpo", "drpo-paper", "drpo-reference"]  # baseline first
    assert res["variants"] == variants
    assert res["context"]["skipped_variants"] == {}
    c = res["context"]
    assert c["warm_rl_disjoint"] and c["warm_start_share"] == 0.5
    assert c["warm_start_rows"] + c["rl_rows"] == c["train_rows"] and c["warm_start_rows"] > 0 and c["rl_rows"] > 0
    assert set(c["warm_start_rows_per_domain"]) == set(c["rl_rows_per_domain"]) == set(res["domains"])
    # paired differences vs the warm start, per split, every arm
    for split in ("val", "test"):
        per = res["paired_vs_warm"][split]
        assert set(per) == set(variants[1:])
        for v in variants[1:]:
            got = [a - b for a, b in zip(res["splits"][split][v]["macro_f1"]["overall"]["values"],
                                         res["splits"][split][WARM]["macro_f1"]["overall"]["values"])]
            assert per[v]["values"] == pytest.approx(got) and per[v]["n"] == 2
    # probe: start at step 0 (the warm start), end at the last step, per arm and seed
    assert set(res["probe"]) == set(variants[1:])
    for v in variants[1:]:
        p = res["probe"][v]
        assert set(p["per_seed"]) == {"0", "1"} and isinstance(p["rises_every_seed"], bool)
        for e in p["per_seed"].values():
            assert e["start_step"] == 0 and e["end_step"] == 2 and 0.0 <= e["start"] <= 1.0
        assert [c[0] for c in p["curve"]] == [0, 2]
    # ECG token modes: per mode a warm start + arm trained and evaluated on the same ECG rows only
    tm = res["ecg_token_modes"]
    assert tm["variant"] == "drpo-paper" and set(tm["modes"]) == {"per_lead", "pooled"}
    assert tm["modes"]["per_lead"]["main_model_mode"] and tm["modes"]["pooled"]["tokens"] == 1
    n_ecg = {"warm": c["warm_start_rows_per_domain"]["ecg"], "rl": c["rl_rows_per_domain"]["ecg"]}
    for mode in ("per_lead", "pooled"):
        assert 0.0 <= tm["modes"][mode]["test"][WARM]["mean"] <= 1.0
        assert tm["modes"][mode]["train_rows"] == {WARM: n_ecg["warm"], "drpo-paper": n_ecg["rl"]}
        unit = json.loads((out / "seed0" / f"ecg-{mode}" / "drpo-paper" / "result.json").read_text())
        assert set(unit["metrics"]["test"]["domains"]) == {"ecg"}
        assert unit["settings"]["warm_start"]["model"]["ecg_token_mode"] == mode
        assert unit["settings"]["rl"]["max_steps"] == 1  # ecg_token_settings reach these units only
    assert res["context"]["seeds"] == [0, 1] and res["context"]["rl"]["max_steps"] == 2
    assert res["context"]["workers"] == 2 and res["context"]["threads_per_worker"] >= 1
    assert sorted(res["domains"]) == sorted(res["train_share"]) and len(res["domains"]) == 9
    assert set(res["rare_domains"]) | set(res["abundant_domains"]) == set(res["domains"])
    for split in ("val", "test"):
        for v in variants:
            e = res["splits"][split][v]
            for key in ("macro_f1", "paper_balanced_accuracy", "exact_match"):
                assert e[key]["overall"]["n"] == 2 and len(e[key]["overall"]["values"]) == 2
                assert 0.0 <= e[key]["overall"]["mean"] <= 1.0
                assert set(e[key]["domains"]) == set(res["domains"])
                assert {"rare", "abundant", "rel_vs_baseline"} <= set(e[key])
    assert res["selected_drpo"]["variant"] in ("drpo-paper", "drpo-reference")
    assert set(res["drpo_scale"]) == {"drpo-paper", "drpo-reference"}  # only DRPO logs scale factors
    assert any(v is not None and v > 0 for v in res["drpo_scale"]["drpo-paper"].values())
    report = (out / "report.md").read_text()
    for heading in ("## What was run", "## Summary (test split)", "## Choosing the default DRPO variant",
                    "## DRPO per-domain scale",
                    "## macro-F1 per domain", "## accuracy (exact match) per domain", "## macro-F1 change vs grpo",
                    "## After RL minus the warm start (test split", "## Probe reward at step 0 vs last step",
                    "rises on every seed?", "## ECG token modes"):
        assert heading in report
    for png in ("f1_by_domain.png", "learning_curves.png", "drpo_scales.png", "probe_curves.png"):
        assert f"]({png})" in report
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.size[0] > 400
    for seed in (0, 1):  # one warm start per seed, shared: every variant of the seed starts from it
        assert (out / f"seed{seed}" / "warm_start" / "config.json").is_file()
        for v in variants[1:]:
            unit = json.loads((out / f"seed{seed}" / v / "result.json").read_text())
            assert unit["settings"]["rl"]["seed"] == seed and unit["settings"]["rl"]["max_steps"] == 2
            assert unit["curves"] and all("step" in c for c in unit["curves"])
            assert [e["step"] for e in unit["probe"]] == [0, 2]
    drpo_curves = json.loads((out / "seed0" / "drpo-paper" / "result.json").read_text())["curves"]
    assert any(k.startswith("mean_abs_scale/") for c in drpo_curves for k in c)


def test_report_step_on_an_existing_folder_reproduces_report_and_results(toy_run):
    """Re-reporting a finished study from its folder (config.yaml, the units' files, and from results.json only the
    run's own facts: timings, machine, train shares) gives the same report.md and results.json byte for byte; a
    changed unit result shows up in the new report."""
    _, _, out = toy_run
    before = {name: (out / name).read_bytes() for name in ("report.md", "results.json")}
    facts = {k: v for k, v in json.loads(before["results.json"]).items() if k in ("context", "train_share")}
    (out / "results.json").write_text(json.dumps(facts))
    (out / "report.md").write_text("stale")
    (out / "f1_by_domain.png").unlink()
    report_compare_estimators(out)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert (out / "f1_by_domain.png").is_file()
    unit = out / "seed1" / "grpo" / "result.json"
    original = unit.read_text()
    changed = json.loads(original)
    changed["metrics"]["test"]["overall"]["macro_f1"] = 0.987654
    try:
        unit.write_text(json.dumps(changed))
        res = report_compare_estimators(out)
        assert res["splits"]["test"]["grpo"]["macro_f1"]["overall"]["values"][1] == 0.987654
    finally:
        unit.write_text(original)
        report_compare_estimators(out)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_report_command_rewrites_an_existing_folder(toy_run):
    """`qoqmed experiment report DIR` re-writes report.md, results.json and the plots from the units."""
    _, _, out = toy_run
    before = {name: (out / name).read_bytes() for name in ("report.md", "results.json")}
    (out / "report.md").write_text("stale")
    (out / "f1_by_domain.png").unlink()
    result = runner.invoke(app, ["experiment", "report", str(out)])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output
    assert {name: (out / name).read_bytes() for name in before} == before
    assert (out / "f1_by_domain.png").is_file()


def test_report_command_refuses_a_folder_without_a_study(tmp_path):
    missing = runner.invoke(app, ["experiment", "report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope" in missing.output and "no such folder" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    no_results = runner.invoke(app, ["experiment", "report", str(tmp_path)])
    assert no_results.exit_code == 2 and "no results.json" in no_results.output


def test_rerun_reuses_finished_units(toy_run):
    _, cfg, out = toy_run
    unit = out / "seed1" / "grpo" / "result.json"
    before = os.stat(unit).st_mtime_ns
    result = runner.invoke(app, ["experiment", "compare-estimators", cfg, "--quick", "--seeds", "2", "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    assert os.stat(unit).st_mtime_ns == before
    context = json.loads((out / "results.json").read_text())["context"]
    assert context["units_reused"] == context["units"] == 2 * 5 + 2 * 2 * 2  # + per mode a warm start and arm
    assert json.loads((out / "results.json").read_text())["context"]["seeds"] == [0, 1]


def _without_timings(logs: dict) -> list[dict]:
    timing = ("runtime", "per_second", "step_time")
    return [{k: v for k, v in row.items() if not any(t in k for t in timing)} for row in logs["log_history"]]


def test_unit_rerun_in_process_equals_the_worker_result(toy_run):
    """The toy run trained its units in 2 worker processes; one unit redone here, in this process, must give the
    same losses, rewards and metrics: the numbers do not depend on workers or the order units finish in."""
    _, cfg, out = toy_run
    unit = out / "seed0" / "drpo-paper"
    before = json.loads((unit / "result.json").read_text())
    logs_before = json.loads((unit / "rl" / "rl_logs.json").read_text())
    (unit / "result.json").unlink()
    result = runner.invoke(app, ["experiment", "compare-estimators", cfg, "--quick", "--seeds", "2", "--out",
                                 str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    after = json.loads((unit / "result.json").read_text())
    assert after["metrics"] == before["metrics"]
    assert _without_timings(json.loads((unit / "rl" / "rl_logs.json").read_text())) == _without_timings(logs_before)
    context = json.loads((out / "results.json").read_text())["context"]
    assert context["units_reused"] == context["units"] - 1 and context["workers"] == 1
    assert "'train_runtime'" in (unit / "train.log").read_text()  # the trainer's printout is kept, not shown


def test_help_explains_the_command():
    result = runner.invoke(app, ["experiment", "compare-estimators", "--help"])
    assert result.exit_code == 0
    for word in ("warm start", "--seeds", "--quick", "--out", "--workers", "report.md"):
        assert word in result.output


# ----------------------------------------------------------------------------------------------------------------
# Warm-start / RL split and the probe summary


def test_warm_start_share_splits_disjoint_and_stratified(tmp_path):
    generate_climb_mini(tmp_path / "d", n_train=180, n_val=18, n_test=27, seed=0, min_per_domain=2)
    train = load_records(tmp_path / "d" / "train.jsonl")
    warm, rl = split_warm_rl(train, 0.4, seed=0)
    assert not {x.id for x in warm} & {x.id for x in rl}
    assert sorted(x.id for x in warm + rl) == sorted(x.id for x in train)
    for d in {x.domain for x in train}:
        n = sum(x.domain == d for x in train)
        w = sum(x.domain == d for x in warm)
        assert 1 <= w <= n - 1 and abs(w - 0.4 * n) <= 1  # every domain in both halves, in proportion
    assert split_warm_rl(train, 0.4, seed=0) == (warm, rl)  # fixed by the data seed
    all_w, all_r = split_warm_rl(train, 1.0, seed=0)
    assert all_w == all_r == train  # share 1: both see every row


def test_probe_summary_start_end_and_rise():
    curves = [[{"step": 0, "reward/ct": 0.2, "reward/ecg": 0.4}, {"step": 10, "reward/ct": 0.6, "reward/ecg": 0.4}],
              [{"step": 0, "reward/ct": 0.5, "reward/ecg": 0.5}, {"step": 10, "reward/ct": 0.4, "reward/ecg": 0.5}]]
    p = probe_summary(curves, [0, 1])
    assert p["per_seed"]["0"]["start"] == pytest.approx(0.3) and p["per_seed"]["0"]["end"] == pytest.approx(0.5)
    assert p["per_seed"]["1"]["rise"] == pytest.approx(-0.05)
    assert not p["rises_every_seed"]
    assert p["curve"][0] == [0, pytest.approx(0.4), 2]
