import json

import pytest
from PIL import Image
from rich.console import Console

from qoqmed.eval import compute_metrics, format_metrics_table, print_summary, write_report
from qoqmed.eval.report import format_value


def row(true, pred, dataset, domain, iou=None, format_ok=True):
    return {"id": None, "domain": domain, "dataset": dataset, "true_labels": true, "pred_labels": pred,
            "iou": iou, "format_ok": format_ok}


@pytest.fixture(scope="module")
def rows():
    out = []
    # single-label, 3 labels, name with a slash: gets a confusion plot
    for t, p in [("A", "A"), ("A", "B"), ("B", "B"), ("C", "Z"), ("B", "C")]:
        out.append(row([t], [p], "ecg/ptbxl", "ecg", iou=0.5))
    # multi-label: no confusion plot
    out += [row(["X", "Y"], ["X"], "cxr", "chest_xray", iou=0.25), row(["Y"], [], "cxr", "chest_xray", format_ok=False)]
    # single-label with 9 labels: too many for a confusion plot
    out += [row([f"L{i}"], [f"L{i}"], "big", "pathology") for i in range(9)]
    return out


@pytest.fixture(scope="module")
def metrics(rows):
    return compute_metrics(rows, expected_domains=["ecg", "chest_xray", "pathology", "mri"])


@pytest.fixture(scope="module")
def written(metrics, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "nested"
    context = {"model": "qoqmed-7b", "data": "climb-test", "wall time": 1.23456, "estimator": "drpo"}
    return write_report(metrics, out, title="Test eval", context=context, rows=rows)


def test_files_written(written):
    assert set(written) == {"report", "metrics", "per_domain_f1", "confusion_ecg_ptbxl"}
    for path in written.values():
        assert path.is_file() and path.stat().st_size > 0
    assert written["confusion_ecg_ptbxl"].name == "confusion_ecg_ptbxl.png"


def test_pngs_open_and_are_nontrivial(written):
    for key in ("per_domain_f1", "confusion_ecg_ptbxl"):
        path = written[key]
        assert path.stat().st_size > 10_000
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.width > 400 and img.height > 300
            assert len(img.convert("L").getcolors(maxcolors=100_000)) > 10


def test_metrics_json_round_trips(written, metrics):
    assert json.loads(written["metrics"].read_text()) == json.loads(json.dumps(metrics))


def test_markdown_content(written, metrics):
    text = written["report"].read_text()
    assert text.startswith("# Test eval")
    for key in ("model", "data", "wall time", "estimator"):
        assert f"**{key}**" in text
    assert "qoqmed-7b" in text and "1.235" in text
    for dom, entry in metrics["domains"].items():
        cells = [dom, str(entry["n"])] + [format_value(entry[k]) for k in
                 ("macro_f1", "paper_balanced_accuracy", "balanced_accuracy", "exact_match", "iou_mean",
                  "format_rate")]
        assert "| " + " | ".join(cells) + " |" in text
    ov = metrics["overall"]
    assert f"| **overall** | **{ov['n']}** | **{format_value(ov['macro_f1'])}** |" in text
    assert "| mri | 0 | - | - | - | - | - | - |" in text
    # per-dataset and per-label tables
    for ds in metrics["datasets"]:
        assert f"| {ds} | {metrics['datasets'][ds]['domain']} |" in text
        assert f"### {ds} (" in text
    assert "| A | 2 | 1 | 0 | 1 | 3 | 1.000 | 0.500 | 1.000 | 0.667 | 0.800 |" in text
    assert "![per_domain_f1](per_domain_f1.png)" in text
    assert "![confusion_ecg_ptbxl](confusion_ecg_ptbxl.png)" in text


def test_format_value():
    assert format_value(None) == "-"
    assert format_value(7) == "7"
    assert format_value(2 / 3) == "0.667"
    assert format_value(1.0) == "1.000"


def test_format_metrics_table(metrics):
    table = format_metrics_table(metrics).splitlines()
    assert table[0].startswith("| domain | n | macro-F1 | paper bal. acc. | balanced acc. |")
    # header, separator, 4 domains in stable (expected) order, overall
    assert len(table) == 7
    assert [line.split("|")[1].strip() for line in table[2:6]] == ["ecg", "chest_xray", "pathology", "mri"]
    assert "overall" in table[-1]


def test_report_without_rows_or_context(metrics, tmp_path):
    paths = write_report(metrics, tmp_path)
    assert set(paths) == {"report", "metrics", "per_domain_f1"}
    text = paths["report"].read_text()
    assert text.startswith("# qoqmed evaluation") and "## Context" not in text


def test_report_of_empty_metrics(tmp_path):
    paths = write_report(compute_metrics([], expected_domains=["ecg"]), tmp_path, rows=[])
    assert paths["per_domain_f1"].stat().st_size > 0
    assert "| ecg | 0 | - |" in paths["report"].read_text()


def test_print_summary(metrics):
    console = Console(record=True, width=160, color_system=None)
    print_summary(metrics, console=console)
    text = console.export_text()
    for dom in metrics["domains"]:
        assert dom in text
    assert "overall" in text
    assert format_value(metrics["overall"]["macro_f1"]) in text
