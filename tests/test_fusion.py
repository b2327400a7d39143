"""Fusion tasks (the paper's Table 4): modality ablation, label probabilities and AUROC, CLIMB-mini's fusion task,
and MIMIC-IV fixture files -> conversion -> warm start -> evaluation per input set -> the table."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from mimic_layout import write_mimic
from qoqmed.cli import app
from qoqmed.data import DataError, load_records
from qoqmed.data.climb_mini import generate_fusion
from qoqmed.data.converters import write_splits
from qoqmed.data.mimic import convert_mimic_iv
from qoqmed.data.modalities import (
    MODALITIES, TABLE4_INPUT_SETS, keep_modalities, parse_input_sets, record_modalities,
)
from qoqmed.data.prompts import load_record
from qoqmed.data.stats import record_stats
from qoqmed.data.validate import validate_records
from qoqmed.eval.answer_scores import answer_prefix, binary_label_sets
from qoqmed.eval.metrics import compute_metrics
from qoqmed.modeling.tiny import TinySpec, build_tiny
from qoqmed.train.sft import SFTSettings, warm_start

SPEC = TinySpec(hidden_size=64, intermediate_size=128, vision_depth=1, vision_hidden=32)


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion")
    generate_fusion(out, n_train=240, n_val=0, n_test=8, seed=3)
    return load_records(out / "train.jsonl"), load_records(out / "test.jsonl")


def _best_accuracy(records, modalities) -> float:
    """Accuracy of the best possible predictor that sees only these modalities' findings (on the data itself)."""
    cells: dict[tuple, Counter] = {}
    for r in records:
        cells.setdefault(tuple(r.extra["findings"][m] for m in modalities), Counter())[r.answer] += 1
    return sum(max(c.values()) for c in cells.values()) / len(records)


def test_fusion_label_needs_all_three_modalities(fusion):
    train, _ = fusion
    assert 0.4 < sum(r.answer == "Yes" for r in train) / len(train) < 0.6
    assert _best_accuracy(train, MODALITIES) == 1.0
    for k in (1, 2):
        for subset in combinations(MODALITIES, k):
            assert _best_accuracy(train, subset) <= 0.82, subset
    # each finding shows in its own modality's input
    fever = [r for r in train if r.extra["findings"]["text"]]
    assert fever and all("febrile with chills" in r.extra["ehr"] for r in fever)
    assert all(bool(r.boxes) == r.extra["findings"]["image"] for r in train)


def test_keep_modalities_drops_files_placeholders_and_notes(fusion):
    record = fusion[1][0]
    assert record_modalities(record) == frozenset(MODALITIES)
    assert keep_modalities(record, MODALITIES) == record
    ecg = keep_modalities(record, {"ecg"})
    assert ecg.images == [] and ecg.boxes == [] and ecg.segmentation_path is None and "ehr" not in ecg.extra
    assert ecg.problem == "<ecg>\nIs the patient at high risk? Options: Yes, No."
    text = keep_modalities(record, {"text"})
    assert text.problem == f"Is the patient at high risk? Options: Yes, No.\nClinical notes: {record.extra['ehr']}"
    loaded = load_record(text)
    assert loaded.images == [] and loaded.ecgs == []
    image = load_record(keep_modalities(record, {"image"}))
    assert len(image.images) == 1 and image.ecgs == [] and "Clinical notes" not in image.problem
    assert record.ecg and record.extra["ehr"]  # the original is untouched
    edited = keep_modalities(record, MODALITIES)
    edited.extra = {**record.extra, "ehr": "something else"}
    with pytest.raises(DataError, match="does not end with its ehr notes"):
        keep_modalities(edited, {"ecg"})


def test_text_only_and_mixed_rows_are_valid_and_counted(fusion):
    folder = fusion[1][0].base_dir
    rows = [{"id": "t1", "domain": "ehr", "dataset": "notes/demo", "problem": "Sepsis? Options: Yes, No.\nClinical "
             "notes: fever, lactate 4.", "answer": "Yes", "ehr": "fever, lactate 4."},
            fusion[1][0].to_dict()]
    (folder / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validate_records(folder / "mixed.jsonl").ok
    records = load_records(folder / "mixed.jsonl")
    assert record_modalities(records[0]) == {"text"} and record_modalities(records[1]) == set(MODALITIES)
    stats = record_stats(records)
    assert (stats["text_only"], stats["with_notes"], stats["user_domains"]) == (1, 2, ["ehr", "multimodal"])
    assert keep_modalities(records[0], {"ecg"}).problem == "Sepsis? Options: Yes, No."


def test_input_sets_parse():
    assert parse_input_sets("table4") == list(TABLE4_INPUT_SETS)
    assert parse_input_sets("ecg, text+ECG") == [{"ecg"}, {"ecg", "text"}]
    for bad, reason in (("ecg,xray", "unknown modality xray"), ("ecg,,text", "empty"), ("ecg,ecg", "twice")):
        with pytest.raises(ValueError, match=reason):
            parse_input_sets(bad)


def test_auroc_from_label_scores_matches_sklearn():
    truth = ["Yes", "No", "Yes", "No", "No", "Yes"]
    p_yes = [0.9, 0.2, 0.4, 0.6, 0.1, 0.7]
    rows = [dict(id=str(i), domain="multimodal", dataset="t", true_labels=[t], pred_labels=["Yes"],
                 format_ok=True, label_scores={"Yes": p, "No": 1 - p}) for i, (t, p) in enumerate(zip(truth, p_yes))]
    expected = roc_auc_score([t == "Yes" for t in truth], p_yes)
    assert expected not in (0.0, 0.5, 1.0)
    metrics = compute_metrics(rows)
    assert metrics["datasets"]["t"]["auroc"] == pytest.approx(expected)
    assert metrics["overall"]["auroc"] == pytest.approx(expected)
    rows[0]["label_scores"] = None  # a row without scores: no AUROC for the dataset
    assert compute_metrics(rows)["datasets"]["t"]["auroc"] is None
    rows[0]["label_scores"] = {"Yes": float("nan")}
    with pytest.raises(ValueError, match="label_scores"):
        compute_metrics(rows)


def test_answer_prefix_and_two_label_datasets(fusion):
    assert answer_prefix("<think>x</think>\\boxed{No}") == "<think>x</think>\\boxed{"
    assert answer_prefix("no answer ") == "no answer\n\\boxed{"
    train, _ = fusion
    assert binary_label_sets(train) == {"climb_mini/fusion": ("No", "Yes")}
    no = next(r for r in train if r.answer == "No")  # the question's options complete the label set
    assert binary_label_sets([no]) == {"climb_mini/fusion": ("No", "Yes")}
    assert binary_label_sets([replace(no, answer="Maybe")]) == {}
    assert binary_label_sets([replace(no, answer="No, Yes")]) == {}


def test_mimic_fixtures_convert_train_evaluate_and_report(tmp_path):
    start = time.perf_counter()
    roots = write_mimic(tmp_path / "src", extra=6)
    data = tmp_path / "src"  # the folder holding ecg/ and cxr/, so row paths stay inside it
    written = write_splits(convert_mimic_iv(roots["mimic_iv"], roots["ecg"], roots["cxr"], notes_root=roots["notes"],
                                            val=0.0, test=0.4, seed=1), data)
    train, test = load_records(written["train"]), load_records(written["test"])
    processor, model = build_tiny([r.problem for r in train] + [r.answer for r in train], SPEC, seed=0)
    warm_start(model, processor, train, tmp_path / "sft", SFTSettings(epochs=2, batch_size=4, learning_rate=3e-3))
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "model"), "--data", str(written["test"]),
                                      "--out", str(tmp_path / "eval"), "--inputs", "table4", "--max-new-tokens",
                                      "8"])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "eval" / "inputs.md").read_text()
    results = json.loads((tmp_path / "eval" / "inputs.json").read_text())
    assert list(results) == ["ecg", "image", "text", "ecg+image+text"]
    scores = {}
    for name, metrics in results.items():
        rows = [json.loads(line) for line in (tmp_path / "eval" / f"inputs_{name}" / "predictions.jsonl").open()]
        assert [r["id"] for r in rows] == [r.id for r in test]
        scores[name] = [r["label_scores"]["Yes"] for r in rows]
        assert all(sum(r["label_scores"].values()) == pytest.approx(1.0) for r in rows)
        for ds in ("mimic_iv/los_7d", "mimic_iv/mortality_48h"):
            subset = [r for r in rows if r["dataset"] == ds]
            truth = [r["true_labels"] == ["Yes"] for r in subset]
            auroc = metrics["datasets"][ds]["auroc"]
            if 0 < sum(truth) < len(truth):
                assert auroc == pytest.approx(roc_auc_score(truth, [r["label_scores"]["Yes"] for r in subset]))
                assert f"| {name} | {len(subset)} |" in table
            else:
                assert auroc is None
    # the model saw different inputs in each set
    assert len({tuple(np.round(v, 6)) for v in scores.values()}) == 4
    assert table.count("| ecg+image+text |") == 2 and "### mimic_iv/los_7d" in table
    assert time.perf_counter() - start < 150


def test_cli_generates_the_fusion_task(tmp_path):
    result = CliRunner().invoke(app, ["data", "generate-fusion", str(tmp_path), "--n-train", "4", "--n-val", "0",
                                      "--n-test", "2"])
    assert result.exit_code == 0, result.output
    assert [r.domain for r in load_records(tmp_path / "train.jsonl")] == ["multimodal"] * 4
    again = CliRunner().invoke(app, ["data", "generate-fusion", str(tmp_path)])
    assert again.exit_code == 2 and "already holds" in again.output
