from __future__ import annotations

import json
from pathlib import Path

import pytest

from qoqmed.eval.compare import build_comparison, compare_runs, format_compare_table, load_run_metrics


def _entry(f1, acc, n=10):
    return {"macro_f1": f1, "paper_balanced_accuracy": acc, "balanced_accuracy": acc, "n": n}


def _write_run(root: Path, name: str, domains: dict, overall: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    metrics = {"overall": overall, "domains": domains, "datasets": {}, "n": overall.get("n", 0)}
    (d / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return d


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    grpo = _write_run(
        tmp_path, "grpo",
        {"CXR": _entry(0.2, 0.8), "ECG": _entry(0.0, 0.5), "Derm": _entry(0.4, None)},
        _entry(0.2, 0.65, 30),
    )
    drpo = _write_run(
        tmp_path, "drpo",
        {"CXR": _entry(0.3, 0.9), "ECG": _entry(0.1, 0.6)},  # no Derm
        _entry(0.25, 0.75, 20),
    )
    sft = _write_run(
        tmp_path, "sft",
        {"CXR": _entry(0.1, 0.4), "ECG": _entry(None, 0.25), "Derm": _entry(0.2, 0.3), "MRI": _entry(0.5, 0.5)},
        _entry(0.2, 0.4, 40),
    )
    return [grpo, drpo, sft]


def test_values_and_relative_change(runs, tmp_path):
    cmp = compare_runs(runs, out_dir=tmp_path / "out")
    assert cmp["runs"] == ["grpo", "drpo", "sft"]
    assert cmp["baseline"] == "grpo"
    assert cmp["domains"] == ["CXR", "ECG", "Derm", "MRI"]
    v, ch = cmp["values"], cmp["relative_change"]
    assert v["CXR"]["macro_f1"] == {"grpo": 0.2, "drpo": 0.3, "sft": 0.1}
    assert ch["CXR"]["macro_f1"]["drpo"] == pytest.approx(50.0)
    assert ch["CXR"]["macro_f1"]["sft"] == pytest.approx(-50.0)
    assert ch["CXR"]["paper_balanced_accuracy"]["drpo"] == pytest.approx(12.5)
    assert "grpo" not in ch["CXR"]["macro_f1"]
    assert v["Derm"]["macro_f1"]["drpo"] is None and ch["Derm"]["macro_f1"]["drpo"] is None
    assert v["MRI"]["macro_f1"]["grpo"] is None and ch["MRI"]["macro_f1"]["sft"] is None
    # zero and missing baselines: no division by zero, no value
    assert ch["ECG"]["macro_f1"] == {"drpo": None, "sft": None}
    assert ch["Derm"]["paper_balanced_accuracy"]["sft"] is None
    assert ch["overall"]["macro_f1"]["drpo"] == pytest.approx(25.0)
    assert ch["overall"]["macro_f1"]["sft"] == pytest.approx(0.0)
    assert cmp["n"]["overall"] == {"grpo": 30, "drpo": 20, "sft": 40}
    assert cmp["n"]["Derm"]["drpo"] is None


def test_markdown_table(runs, tmp_path):
    cmp = compare_runs(runs, out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "compare.md").read_text(encoding="utf-8")
    table = format_compare_table(cmp)
    assert table in md
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r[0]: dict(zip(header, r)) for r in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}
    assert list(rows) == ["CXR", "ECG", "Derm", "MRI", "**overall**"]
    cxr = rows["CXR"]
    assert cxr["macro-F1 grpo"] == "0.200" and cxr["macro-F1 drpo"] == "0.300"
    assert cxr["Δ macro-F1 drpo vs grpo"] == "+50.0%"
    assert cxr["Δ macro-F1 sft vs grpo"] == "-50.0%"
    assert rows["ECG"]["Δ macro-F1 drpo vs grpo"] == "-"
    assert rows["Derm"]["macro-F1 drpo"] == "-"
    assert rows["Derm"]["Δ paper bal. acc. sft vs grpo"] == "-"
    assert rows["MRI"]["macro-F1 grpo"] == "-"
    assert rows["**overall**"]["Δ macro-F1 drpo vs grpo"] == "**+25.0%**"
    assert "Δ macro-F1 grpo vs grpo" not in header


def test_png_and_custom_names_and_baseline(runs, tmp_path):
    from PIL import Image

    cmp = compare_runs([r / "metrics.json" for r in runs], names=["A", "B", "C"], out_dir=tmp_path / "o", baseline=1)
    png = cmp["paths"]["png"]
    assert png == tmp_path / "o" / "compare.png"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300
    assert cmp["baseline"] == "B"
    assert cmp["relative_change"]["CXR"]["macro_f1"]["A"] == pytest.approx(100 * (0.2 - 0.3) / 0.3)
    assert cmp["relative_change"]["Derm"]["macro_f1"] == {"A": None, "C": None}  # baseline lacks Derm


def test_no_out_dir_writes_nothing(runs, tmp_path):
    cmp = compare_runs(runs)
    assert "paths" not in cmp
    assert not (tmp_path / "compare.md").exists()


def test_missing_and_malformed_metrics(runs, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        compare_runs([runs[0], empty], out_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_run_metrics(tmp_path / "nowhere" / "metrics.json")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad"):
        compare_runs([bad])
    (bad / "metrics.json").write_text(json.dumps({"overall": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a qoqmed metrics.json"):
        load_run_metrics(bad)


def test_argument_errors(runs):
    m = [load_run_metrics(r) for r in runs]
    with pytest.raises(ValueError, match="names"):
        build_comparison(m, ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        build_comparison(m, ["a", "a", "b"])
    with pytest.raises(ValueError, match="baseline"):
        build_comparison(m, ["a", "b", "c"], baseline=3)
    with pytest.raises(ValueError, match="at least one"):
        build_comparison([], [])
    with pytest.raises(TypeError):
        compare_runs(runs[0])  # type: ignore[arg-type]


def test_duplicate_default_names(tmp_path):
    a = _write_run(tmp_path / "x", "run", {"CXR": _entry(0.2, 0.5)}, _entry(0.2, 0.5))
    b = _write_run(tmp_path / "y", "run", {"CXR": _entry(0.4, 0.5)}, _entry(0.4, 0.5))
    cmp = compare_runs([a, b])
    assert cmp["runs"] == ["run (0)", "run (1)"]
    assert cmp["relative_change"]["CXR"]["macro_f1"]["run (1)"] == pytest.approx(100.0)
