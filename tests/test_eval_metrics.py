import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, f1_score

from qoqmed.eval import compute_metrics, confusion_matrix_single_label
from qoqmed.eval.metrics import AVERAGED_METRICS, OTHER_LABEL


def row(true, pred, dataset="toy", domain="ecg", iou=None, format_ok=True, id=None):
    return {
        "id": id,
        "domain": domain,
        "dataset": dataset,
        "true_labels": list(true),
        "pred_labels": list(pred),
        "iou": iou,
        "format_ok": format_ok,
    }


# Single-label toy dataset, labels A, B, C:
#   r1 A -> A    r2 A -> B    r3 B -> B    r4 C -> (nothing)    r5 B -> C
# A: tp=1 (r1) fp=0 fn=1 (r2) tn=3 -> acc 4/5, prec 1, rec 1/2, spec 3/3, F1 2/3, (sens+spec)/2 = 3/4
# B: tp=1 (r3) fp=1 (r2) fn=1 (r5) tn=2 -> acc 3/5, prec 1/2, rec 1/2, spec 2/3, F1 1/2, (sens+spec)/2 = 7/12
# C: tp=0 fp=1 (r5) fn=1 (r4) tn=3 -> acc 3/5, prec 0, rec 0, spec 3/4, F1 0, (sens+spec)/2 = 3/8
# macro-F1 = (2/3 + 1/2 + 0) / 3 = 7/18
# paper balanced accuracy = (4/5 + 3/5 + 3/5) / 3 = 2/3
# balanced accuracy = (3/4 + 7/12 + 3/8) / 3 = 41/72
# exact match = 2/5 (r1, r3)
TOY = [
    row(["A"], ["A"], id=1),
    row(["A"], ["B"], id=2),
    row(["B"], ["B"], id=3),
    row(["C"], [], id=4),
    row(["B"], ["C"], id=5),
]

TOY_LABELS = {
    "A": dict(tp=1, fp=0, fn=1, tn=3, support=2, accuracy=4 / 5, precision=1.0, recall=1 / 2, specificity=1.0,
              f1=2 / 3, balanced_accuracy=3 / 4),
    "B": dict(tp=1, fp=1, fn=1, tn=2, support=2, accuracy=3 / 5, precision=1 / 2, recall=1 / 2, specificity=2 / 3,
              f1=1 / 2, balanced_accuracy=7 / 12),
    "C": dict(tp=0, fp=1, fn=1, tn=3, support=1, accuracy=3 / 5, precision=0.0, recall=0.0, specificity=3 / 4,
              f1=0.0, balanced_accuracy=3 / 8),
}


def test_single_label_hand_computed():
    m = compute_metrics(TOY)
    ds = m["datasets"]["toy"]
    assert list(ds["labels"]) == ["A", "B", "C"]
    for label, expected in TOY_LABELS.items():
        got = ds["labels"][label]
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), (label, key)
    assert ds["macro_f1"] == pytest.approx(7 / 18)
    assert ds["paper_balanced_accuracy"] == pytest.approx(2 / 3)
    assert ds["balanced_accuracy"] == pytest.approx(41 / 72)
    assert ds["exact_match"] == pytest.approx(2 / 5)
    assert ds["n"] == 5
    assert ds["domain"] == "ecg"
    assert ds["n_labels_present"] == 3
    assert ds["n_out_of_set_predictions"] == 0
    assert ds["format_rate"] == 1.0
    # One dataset in one domain: domain and overall equal the dataset.
    for level in (m["domains"]["ecg"], m["overall"]):
        for key in AVERAGED_METRICS:
            assert level[key] == pytest.approx(ds[key])
    assert m["n"] == m["overall"]["n"] == m["domains"]["ecg"]["n"] == 5


def test_per_label_agrees_with_sklearn():
    m = compute_metrics(TOY)
    for label, got in m["datasets"]["toy"]["labels"].items():
        y_true = [label in r["true_labels"] for r in TOY]
        y_pred = [label in r["pred_labels"] for r in TOY]
        assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert got["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0))


# Multi-label dataset, labels X, Y:
#   r1 {X, Y} -> {X}    r2 {X} -> {X, Y}    r3 {} -> {}    r4 {Y} -> {Y}
# X: tp=2 fp=0 fn=0 tn=2 -> acc 1, F1 1, spec 1, (sens+spec)/2 = 1
# Y: tp=1 (r4) fp=1 (r2) fn=1 (r1) tn=1 (r3) -> acc 1/2, prec 1/2, rec 1/2, F1 1/2, spec 1/2, (sens+spec)/2 = 1/2
# macro-F1 = paper balanced accuracy = balanced accuracy = 3/4; exact match = 2/4 (r3, r4)
def test_multi_label_hand_computed():
    rows = [
        row(["X", "Y"], ["X"], dataset="cxr"),
        row(["X"], ["X", "Y"], dataset="cxr"),
        row([], [], dataset="cxr"),
        row(["Y"], ["Y"], dataset="cxr"),
    ]
    ds = compute_metrics(rows)["datasets"]["cxr"]
    x, y = ds["labels"]["X"], ds["labels"]["Y"]
    assert (x["tp"], x["fp"], x["fn"], x["tn"]) == (2, 0, 0, 2)
    assert (y["tp"], y["fp"], y["fn"], y["tn"]) == (1, 1, 1, 1)
    assert x["f1"] == 1.0 and y["f1"] == pytest.approx(0.5)
    assert y["specificity"] == pytest.approx(0.5)
    assert ds["macro_f1"] == pytest.approx(0.75)
    assert ds["paper_balanced_accuracy"] == pytest.approx(0.75)
    assert ds["balanced_accuracy"] == pytest.approx(0.75)
    assert ds["exact_match"] == pytest.approx(0.5)


def test_macro_over_labels_present_in_ground_truth_only():
    # D is in the label set and predicted once, but never true: it gets an entry, not a vote in the average.
    rows = TOY + [row(["A"], ["D"], id=6)]
    ds = compute_metrics(rows, label_sets={"toy": ["A", "B", "C", "D"]})["datasets"]["toy"]
    d = ds["labels"]["D"]
    assert (d["tp"], d["fp"], d["fn"], d["tn"], d["support"]) == (0, 1, 0, 5, 0)
    assert ds["n_labels_present"] == 3
    # A: tp=1 fn=2 fp=0 -> F1 = 2*1*(1/3)/(4/3) = 1/2; B and C as in TOY (r6 adds a tn to each).
    assert ds["labels"]["A"]["f1"] == pytest.approx(1 / 2)
    assert ds["macro_f1"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    # one-vs-rest accuracy: A tp1 tn3, B tp1 tn3, C tp0 tn4 -> 4/6 each
    assert ds["paper_balanced_accuracy"] == pytest.approx(4 / 6)


def test_prediction_only_labels_without_label_set():
    rows = [row(["A"], ["A"]), row(["B"], ["Z"])]
    ds = compute_metrics(rows)["datasets"]["toy"]
    # Ground-truth labels first, then prediction-only ones.
    assert list(ds["labels"]) == ["A", "B", "Z"]
    assert ds["labels"]["Z"]["support"] == 0 and ds["labels"]["Z"]["fp"] == 1
    # A: F1 1, B: F1 0; Z excluded.
    assert ds["macro_f1"] == pytest.approx(0.5)
    assert ds["n_labels_present"] == 2


def test_out_of_set_predictions_count_for_no_label():
    rows = [row(["A"], ["A", "Q"]), row(["B"], ["q"]), row(["B"], ["B"])]
    ds = compute_metrics(rows, label_sets={"toy": ["A", "B"]})["datasets"]["toy"]
    assert list(ds["labels"]) == ["A", "B"]
    a, b = ds["labels"]["A"], ds["labels"]["B"]
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (1, 0, 0, 2)
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (1, 0, 1, 1)
    assert ds["n_out_of_set_predictions"] == 2
    # r1 has an extra (out-of-set) prediction, r2 only an out-of-set one: neither is an exact match.
    assert ds["exact_match"] == pytest.approx(1 / 3)


def test_ground_truth_outside_label_set_is_an_error():
    with pytest.raises(ValueError, match="'C'.*label_sets"):
        compute_metrics(TOY, label_sets={"toy": ["A", "B"]})


def test_empty_predictions():
    rows = [row(r["true_labels"], []) for r in TOY]
    ds = compute_metrics(rows)["datasets"]["toy"]
    for label, m in ds["labels"].items():
        assert m["tp"] == 0 and m["fp"] == 0
        assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
        assert m["specificity"] == 1.0
    assert ds["macro_f1"] == 0.0
    # One-vs-rest accuracy = share of rows without the label: A 3/5, B 3/5, C 4/5.
    assert ds["paper_balanced_accuracy"] == pytest.approx((3 / 5 + 3 / 5 + 4 / 5) / 3)
    # (0 + 1) / 2 per label.
    assert ds["balanced_accuracy"] == pytest.approx(0.5)
    assert ds["exact_match"] == 0.0


def test_undefined_specificity_uses_sensitivity():
    rows = [row(["A"], ["A"]), row(["A"], [])]
    a = compute_metrics(rows)["datasets"]["toy"]["labels"]["A"]
    assert a["specificity"] is None
    assert a["balanced_accuracy"] == pytest.approx(0.5)


def test_no_ground_truth_labels_gives_none():
    rows = [row([], []), row([], ["A"])]
    ds = compute_metrics(rows)["datasets"]["toy"]
    assert ds["macro_f1"] is None and ds["paper_balanced_accuracy"] is None and ds["balanced_accuracy"] is None
    assert ds["exact_match"] == pytest.approx(0.5)


def test_case_and_whitespace_insensitive_matching():
    rows = [
        row(["Atrial  Fibrillation"], ["atrial fibrillation "]),
        row(["NORMAL"], ["Normal"]),
        row(["Normal"], ["normal"]),
    ]
    ds = compute_metrics(rows)["datasets"]["toy"]
    # Display names come from the ground truth (whitespace collapsed).
    assert list(ds["labels"]) == ["Atrial Fibrillation", "NORMAL"]
    assert ds["macro_f1"] == 1.0 and ds["exact_match"] == 1.0
    assert ds["labels"]["NORMAL"]["tp"] == 2
    ds = compute_metrics(rows, label_sets={"toy": ["atrial fibrillation", "Normal"]})["datasets"]["toy"]
    assert list(ds["labels"]) == ["atrial fibrillation", "Normal"]
    assert ds["n_out_of_set_predictions"] == 0


def perfect(dataset, domain, n):
    return [row(["A"], ["A"], dataset=dataset, domain=domain) for _ in range(n)]


def useless(dataset, domain, n):
    return [row(["A"], ["B"], dataset=dataset, domain=domain) for _ in range(n)]


def test_domain_is_mean_over_datasets_and_overall_mean_over_domains():
    rows = perfect("d1", "ecg", 1) + useless("d2", "ecg", 9) + perfect("d3", "cxr", 2)
    m = compute_metrics(rows)
    # d2: A tp=0 fn=9 -> F1 0 (B is prediction-only, excluded)
    assert m["datasets"]["d1"]["macro_f1"] == 1.0
    assert m["datasets"]["d2"]["macro_f1"] == 0.0
    ecg = m["domains"]["ecg"]
    assert ecg["macro_f1"] == pytest.approx(0.5)  # not 1/10 as pooling rows would give
    assert ecg["exact_match"] == pytest.approx(0.5)
    assert ecg["datasets"] == ["d1", "d2"] and ecg["n"] == 10 and ecg["n_datasets"] == 2
    assert m["domains"]["cxr"]["macro_f1"] == 1.0
    assert m["overall"]["macro_f1"] == pytest.approx(0.75)
    assert m["overall"]["n"] == m["n"] == 12
    assert m["overall"]["domains"] == ["cxr", "ecg"]
    assert list(m["domains"]) == ["cxr", "ecg"]


def test_format_rate_and_iou_aggregation():
    rows = [
        row(["A"], ["A"], dataset="d1", domain="us", iou=0.2, format_ok=True),
        row(["A"], ["A"], dataset="d1", domain="us", iou=None, format_ok=False),
        row(["A"], ["A"], dataset="d1", domain="us", iou=0.6, format_ok=True),
        row(["A"], ["A"], dataset="d1", domain="us", iou=1.0, format_ok=True),
        row(["A"], ["A"], dataset="d2", domain="ct", iou=0.0, format_ok=False),
        row(["A"], ["A"], dataset="d3", domain="ct", format_ok=True),  # no iou key at all
    ]
    m = compute_metrics(rows)
    d1 = m["datasets"]["d1"]
    assert d1["iou_mean"] == pytest.approx(0.6) and d1["iou_median"] == pytest.approx(0.6) and d1["iou_n"] == 3
    assert d1["format_rate"] == pytest.approx(3 / 4)
    assert m["datasets"]["d3"]["iou_mean"] is None and m["datasets"]["d3"]["iou_n"] == 0
    ct = m["domains"]["ct"]
    assert ct["iou_mean"] == 0.0 and ct["iou_n"] == 1
    assert ct["format_rate"] == pytest.approx(0.5)  # mean of d2 (0) and d3 (1)
    # IoU pools rows: (0.2 + 0.6 + 1.0 + 0.0) / 4, median of {0, 0.2, 0.6, 1} = 0.4
    assert m["overall"]["iou_mean"] == pytest.approx(0.45)
    assert m["overall"]["iou_median"] == pytest.approx(0.4)
    assert m["overall"]["iou_n"] == 4
    # format rate: mean over domains of (3/4) and (1/2)
    assert m["overall"]["format_rate"] == pytest.approx(0.625)


def test_expected_domains():
    m = compute_metrics(TOY, expected_domains=["ct", "ecg", "mri"])
    assert list(m["domains"]) == ["ct", "ecg", "mri"]
    for dom in ("ct", "mri"):
        entry = m["domains"][dom]
        assert entry["n"] == 0 and entry["datasets"] == [] and entry["iou_n"] == 0
        assert all(entry[k] is None for k in AVERAGED_METRICS)
    assert m["overall"]["domains"] == ["ecg"]
    assert m["overall"]["macro_f1"] == pytest.approx(7 / 18)


def test_no_rows():
    m = compute_metrics([], expected_domains=["ecg"])
    assert m["n"] == 0 and m["datasets"] == {}
    assert m["overall"]["macro_f1"] is None and m["domains"]["ecg"]["n"] == 0
    json.dumps(m)


def test_json_serialisable_round_trip():
    rows = TOY + [row(["X", "Y"], ["X"], dataset="cxr", domain="chest_xray", iou=np.float32(0.5))]
    m = compute_metrics(iter(rows), expected_domains=["ct"])
    assert json.loads(json.dumps(m, allow_nan=False)) == m


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"true_labels": "A"}, TypeError),
        ({"pred_labels": [1]}, TypeError),
        ({"iou": 1.5}, ValueError),
        ({"iou": float("nan")}, ValueError),
        ({"iou": "0.3"}, TypeError),
    ],
)
def test_bad_rows_are_clear_errors(bad, error):
    r = {**row(["A"], ["A"], id="case-7"), **bad}
    with pytest.raises(error, match="case-7"):
        compute_metrics([r])


def test_missing_key_and_dataset_in_two_domains():
    r = row(["A"], ["A"], id="x1")
    del r["format_ok"]
    with pytest.raises(ValueError, match="format_ok"):
        compute_metrics([r])
    with pytest.raises(ValueError, match="two domains"):
        compute_metrics([row(["A"], ["A"], domain="ecg"), row(["A"], ["A"], domain="ct")])


def test_confusion_matrix_single_label():
    cm = confusion_matrix_single_label(TOY, ["A", "B", "C"])
    #            A  B  C  other
    expected = [[1, 1, 0, 0],   # r1 A->A, r2 A->B
                [0, 1, 1, 0],   # r3 B->B, r5 B->C
                [0, 0, 0, 1]]   # r4 C->nothing
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_confusion_matrix_other_column_and_errors():
    rows = [row(["a"], ["A"]), row(["A"], ["Q"]), row(["A"], ["A", "B"]), row(["B"], [" b "])]
    cm = confusion_matrix_single_label(rows, ["A", "B"])
    np.testing.assert_array_equal(cm, [[1, 0, 2], [0, 1, 0]])
    assert OTHER_LABEL == "other/none"
    with pytest.raises(ValueError, match="exactly one true label"):
        confusion_matrix_single_label([row(["A", "B"], ["A"])], ["A", "B"])
    with pytest.raises(ValueError, match="exactly one true label"):
        confusion_matrix_single_label([row(["C"], ["A"])], ["A", "B"])
    assert confusion_matrix_single_label([], ["A", "B"]).shape == (2, 3)


LABELS = ["A", "B", "C", "D"]


@st.composite
def random_rows(draw):
    n = draw(st.integers(1, 25))
    subsets = st.lists(st.sampled_from(LABELS), max_size=3, unique=True)
    return [
        row(draw(subsets), draw(subsets), dataset=draw(st.sampled_from(["d1", "d2", "d3"])),
            domain="dom", iou=draw(st.none() | st.floats(0, 1)))
        for _ in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(random_rows())
def test_invariants(rows):
    m = compute_metrics(rows)
    json.dumps(m, allow_nan=False)
    for name, ds in m["datasets"].items():
        ds_rows = [r for r in rows if r["dataset"] == name]
        present = [label for label in LABELS if any(label in r["true_labels"] for r in ds_rows)]
        for label, lm in ds["labels"].items():
            assert lm["tp"] + lm["fp"] + lm["fn"] + lm["tn"] == ds["n"]
            for key in ("accuracy", "precision", "recall", "f1", "balanced_accuracy"):
                assert 0.0 <= lm[key] <= 1.0
        if present:
            y_true = np.array([[label in r["true_labels"] for label in present] for r in ds_rows])
            y_pred = np.array([[label in r["pred_labels"] for label in present] for r in ds_rows])
            expected = np.mean([f1_score(y_true[:, j], y_pred[:, j], zero_division=0) for j in range(len(present))])
            assert ds["macro_f1"] == pytest.approx(expected)
            assert ds["paper_balanced_accuracy"] == pytest.approx(float((y_true == y_pred).mean()))
        else:
            assert ds["macro_f1"] is None


def test_boxes_per_answer_and_box_rate_over_localisable_rows():
    box = {"bbox_2d": [0, 0, 4, 4], "label": "x"}
    rows = [
        {**row(["A"], ["A"], dataset="d1", domain="us", iou=0.5), "pred_boxes": [box, box]},
        {**row(["A"], ["A"], dataset="d1", domain="us", iou=0.0), "pred_boxes": []},
        {**row(["A"], ["A"], dataset="d1", domain="us", iou=None), "pred_boxes": [box] * 5},  # nothing to localise
        {**row(["A"], ["A"], dataset="d2", domain="ct", iou=0.1), "pred_boxes": [box]},
        row(["A"], ["A"], dataset="d3", domain="ecg"),  # no boxes recorded at all
    ]
    m = compute_metrics(rows)
    assert m["datasets"]["d1"]["boxes_per_answer"] == pytest.approx(1.0)  # (2 + 0) / 2, the None row left out
    assert m["datasets"]["d1"]["box_rate"] == pytest.approx(0.5)
    assert m["overall"]["boxes_per_answer"] == pytest.approx(1.0) and m["overall"]["box_rate"] == pytest.approx(2 / 3)
    assert m["domains"]["ecg"]["boxes_per_answer"] is None and m["domains"]["ecg"]["box_rate"] is None
    with pytest.raises(TypeError, match="pred_boxes"):
        compute_metrics([{**row(["A"], ["A"], iou=0.2), "pred_boxes": "box"}])
