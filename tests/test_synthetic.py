import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, signal
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qoqmed.data import DOMAINS, SPLITS, load_ecg, load_image, load_mask, load_records, split_labels
from qoqmed.data.climb_mini import (
    DEFAULT_TRAIN_WEIGHTS,
    DOMAIN_SPECS,
    LABELS,
    ClimbMiniConfig,
    allocate,
    generate_climb_mini,
    simulate_ecg,
)

N = {"n_train": 150, "n_val": 36, "n_test": 36}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("climb_mini")
    stats = generate_climb_mini(out, seed=3, **N)
    records = {split: load_records(out / f"{split}.jsonl") for split in SPLITS}  # also checks every file exists
    return out, stats, records


def _all(records):
    return [r for split in SPLITS for r in records[split]]


def _options(problem: str) -> list[str]:
    assert "Options: " in problem and problem.endswith(".")
    return split_labels(problem.split("Options: ", 1)[1][:-1])


# ----------------------------------------------------------------------------------------------------------------
# Layout, splits and mix


def test_outputs_exist(bench):
    out, stats, records = bench
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "datasheet.md", "stats.json"):
        assert (out / name).is_file()
    assert json.loads((out / "stats.json").read_text()) == stats
    sheet = (out / "datasheet.md").read_text()
    for domain, labels in LABELS.items():
        assert domain in sheet and all(label in sheet for label in labels)
    for split in SPLITS:
        assert stats["splits"][split]["rows"] == len(records[split]) == N[f"n_{split}"]


def test_every_domain_in_every_split(bench):
    _, stats, records = bench
    for split in SPLITS:
        counts = Counter(r.domain for r in records[split])
        assert set(counts) == set(DOMAINS)
        assert min(counts.values()) >= 4
        assert {d: stats["splits"][split]["domains"][d]["rows"] for d in DOMAINS} == dict(counts)


def test_train_is_imbalanced_and_eval_is_flat(bench):
    _, _, records = bench
    train = Counter(r.domain for r in records["train"])
    assert train.most_common(1)[0][0] == "ct"
    assert max(train.values()) / min(train.values()) >= 5
    for split in ("val", "test"):
        assert set(Counter(r.domain for r in records[split]).values()) == {4}


def test_splits_are_disjoint(bench):
    _, _, records = bench
    ids = {split: {r.id for r in records[split]} for split in SPLITS}
    files = {split: {p for r in records[split] for _, p in r.files()} for split in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b]
        assert not files[a] & files[b]
    assert sum(len(v) for v in ids.values()) == sum(N.values())


def test_default_mix_is_the_papers_skew():
    w = DEFAULT_TRAIN_WEIGHTS
    share = {d: v / sum(w.values()) for d, v in w.items()}
    assert max(share, key=share.get) == "ct" and share["ct"] > 0.5  # one dominant domain
    assert sum(v < 0.01 for v in share.values()) >= 3  # several under 1%
    counts = allocate(20000, w, 4)  # at a large size the realised shares follow the weights
    assert counts["ultrasound"] / 20000 < 0.01 and counts["ct"] / 20000 > 0.6


def test_allocate():
    counts = allocate(1000, DEFAULT_TRAIN_WEIGHTS, 4)
    assert sum(counts.values()) == 1000 and min(counts.values()) >= 4
    assert counts["ct"] > 350 and counts["ultrasound"] < 30
    assert allocate(36, {"ct": 1.0}, 4) == {d: 4 for d in DOMAINS}
    with pytest.raises(ValueError):
        allocate(30, DEFAULT_TRAIN_WEIGHTS, 4)


# ----------------------------------------------------------------------------------------------------------------
# Rows


def test_labels_answers_and_problems(bench):
    _, _, records = bench
    for r in _all(records):
        spec = DOMAIN_SPECS[r.domain]
        assert r.dataset == f"climb_mini/{r.domain}"
        assert r.labels and set(r.labels) <= set(spec.labels)
        assert _options(r.problem) == list(spec.labels)
        assert len(r.labels) == 1 or (spec.multi_label and spec.normal not in r.labels)
        assert r.labels == [lab for lab in spec.labels if lab in r.labels]  # option order
        assert r.problem.count("<image>") == len(r.images) and r.problem.count("<ecg>") == len(r.ecg)
        assert r.difficulty in ("easy", "hard")
    assert any(len(r.labels) == 2 for r in records["train"] if r.domain == "chest_xray")


def test_labels_balanced_within_domain(bench):
    _, _, records = bench
    for domain in ("ct", "dermoscopy", "ecg", "mammography"):
        counts = Counter(r.answer for r in records["train"] if r.domain == domain)
        assert set(counts) == set(LABELS[domain])
        assert max(counts.values()) - min(counts.values()) <= 1


def test_hard_rows_exist_per_domain(bench):
    _, _, records = bench
    for domain in DOMAINS:
        tiers = Counter(r.difficulty for r in records["train"] if r.domain == domain)
        assert tiers["easy"] > 0 and tiers["hard"] > 0


def test_images_sizes_and_counts(bench):
    _, _, records = bench
    cfg = ClimbMiniConfig()
    for r in _all(records):
        if r.domain == "ecg":
            assert r.images == [] and r.boxes == [] and r.segmentation_path is None and len(r.ecg) == 1
            continue
        assert r.ecg == []
        expected = {"ct": cfg.volume_slices, "mri": cfg.volume_slices, "ultrasound": cfg.ultrasound_frames}
        assert len(r.images) == expected.get(r.domain, 1)
        size = cfg.volume_size if r.domain in ("ct", "mri") else cfg.image_size
        for p in r.images:
            img = load_image(r.resolve(p))
            assert img.size == (size, size) and size % 28 == 0


def test_boxes_and_masks(bench):
    _, _, records = bench
    for r in _all(records):
        spec = DOMAIN_SPECS[r.domain]
        if r.domain == "ecg" or r.labels == [spec.normal]:
            assert r.boxes == [] and r.segmentation_path is None
            continue
        assert r.boxes and r.segmentation_path is not None
        assert {b.label for b in r.boxes} == set(r.labels)
        sizes = [load_image(r.resolve(p)).size for p in r.images]
        for b in r.boxes:
            x1, y1, x2, y2 = b.bbox_2d
            w, h = sizes[b.image]
            assert all(isinstance(v, int) for v in b.bbox_2d)
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        mask = load_mask(r.resolve(r.segmentation_path), size=sizes[r.mask_image])
        inside = np.zeros_like(mask)
        for b in r.boxes:
            if b.image == r.mask_image:
                x1, y1, x2, y2 = b.bbox_2d
                inside[y1:y2, x1:x2] = True
                assert mask[y1:y2, x1:x2].any()
                # tight: the mask touches every side of the box
                sub = mask[y1:y2, x1:x2]
                assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
        assert mask.any() and not (mask & ~inside).any()


def test_volume_lesions_on_consecutive_slices(bench):
    _, _, records = bench
    for r in _all(records):
        if r.domain in ("ct", "mri") and r.boxes:
            slices = sorted(b.image for b in r.boxes)
            assert len(slices) == 2 and slices[1] == slices[0] + 1
        if r.domain == "ultrasound" and r.boxes:
            assert sorted(b.image for b in r.boxes) == list(range(len(r.images)))


def test_lesions_are_visible_in_easy_rows(bench):
    _, _, records = bench
    for r in _all(records):
        if r.domain == "ecg" or not r.boxes or r.difficulty != "easy" or len(r.labels) > 1:
            continue  # a two-finding mask mixes a bright and a dark lesion; single findings are checked
        img = np.asarray(load_image(r.resolve(r.images[r.mask_image])), dtype=np.float64)
        mask = load_mask(r.resolve(r.segmentation_path))
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        ring &= img.max(axis=2) < 235  # compare with tissue, not with the skull that bounds extra-axial lesions
        contrast = np.abs(img[mask].mean(axis=0) - img[ring].mean(axis=0)).max()
        assert contrast > 25, (r.id, r.answer, contrast)


# ----------------------------------------------------------------------------------------------------------------
# Learnability: easy rows must be told apart by coarse statistics of whole patches (what a tiny model with 14x14
# patches merged into 28x28-pixel tokens, or a mean-pooled ECG encoder over 200 ms windows, picks up first), not
# only by fine shapes, dots or textures.

PROBE_ROWS = 100  # easy rows per domain: the first 60 fit a linear probe, the other 40 score it


@pytest.fixture(scope="module")
def easy_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("climb_mini_easy")
    generate_climb_mini(out, n_train=PROBE_ROWS * len(DOMAINS), n_val=36, n_test=36, seed=21, hard_fraction=0.0,
                        domain_weights={d: 1.0 for d in DOMAINS})
    rows = load_records(out / "train.jsonl")
    by_domain = {d: [r for r in rows if r.domain == d] for d in DOMAINS}
    assert all(len(v) == PROBE_ROWS and all(r.difficulty == "easy" for r in v) for v in by_domain.values())
    return by_domain


def _cell_features(r, cell: int = 28) -> np.ndarray:
    """Mean and standard deviation of each colour channel in every 28x28 cell of every image of a row."""
    out = []
    for p in r.images:
        a = np.asarray(load_image(r.resolve(p)), dtype=np.float32) / 255.0
        h, w, c = a.shape
        blocks = a.reshape(h // cell, cell, w // cell, cell, c)
        out += [blocks.mean(axis=(1, 3)).ravel(), blocks.std(axis=(1, 3)).ravel()]
    return np.concatenate(out)


def _probe(x: np.ndarray, y: np.ndarray, scale: bool = True) -> float:
    """Held-out balanced accuracy of a logistic regression fitted on the first 60 rows."""
    fit = 60
    clf = LogisticRegression(C=0.1 if scale else 1.0, max_iter=5000)
    model = make_pipeline(StandardScaler(), clf) if scale else clf
    model.fit(x[:fit], y[:fit])
    return float(balanced_accuracy_score(y[fit:], model.predict(x[fit:])))


def test_easy_image_classes_are_learnable_from_cell_statistics(easy_rows):
    scores = {}
    for domain, rows in easy_rows.items():
        if domain == "ecg":
            continue
        x = np.stack([_cell_features(r) for r in rows])
        if DOMAIN_SPECS[domain].multi_label:
            for label in LABELS[domain]:
                scores[f"{domain}: {label}"] = _probe(x, np.array([label in r.labels for r in rows]))
        else:
            scores[domain] = _probe(x, np.array([r.labels[0] for r in rows]))
    print("\nheld-out balanced accuracy of a linear probe on 28x28-cell mean/std, easy rows:")
    for name, acc in scores.items():
        print(f"  {name:32s} {acc:.2f}")
    assert min(scores.values()) >= 0.8, scores


def test_easy_lesions_are_large_and_class_coloured(easy_rows):
    """Each abnormal class has its own lesion colour or grey level, and easy lesions span several cells."""
    for domain, rows in easy_rows.items():
        if domain == "ecg":
            continue
        colours: dict[str, list[np.ndarray]] = {}
        for r in rows:
            if not r.boxes:
                continue
            img = np.asarray(load_image(r.resolve(r.images[r.boxes[0].image])), dtype=np.float64) / 255.0
            x1, y1, x2, y2 = r.boxes[0].bbox_2d
            assert max(x2 - x1, y2 - y1) >= 0.25 * img.shape[0], (r.id, r.boxes[0].bbox_2d)
            if len(r.labels) == 1:
                colours.setdefault(r.labels[0], []).append(img[load_mask(r.resolve(r.segmentation_path))].mean(0))
        means = {label: np.mean(v, axis=0) for label, v in colours.items()}
        assert set(means) == set(LABELS[domain]) - {DOMAIN_SPECS[domain].normal}
        for a in means:
            for b in means:
                if a < b:
                    gap = np.abs(means[a] - means[b]).max()
                    assert gap >= 0.15, (domain, a, b, means[a], means[b])


def _ecg_window_features(x: np.ndarray, window: int = 50) -> np.ndarray:
    """Per lead: the mean over 200 ms windows of each window's mean, standard deviation, minimum and maximum (mV)."""
    w = x.reshape(x.shape[0], -1, window)
    return np.stack([w.mean(-1), w.std(-1), w.min(-1), w.max(-1)], axis=-1).mean(axis=1).ravel()


def test_easy_ecg_classes_are_learnable_from_window_statistics():
    labels = LABELS["ecg"]
    y = np.array([labels[i % len(labels)] for i in range(PROBE_ROWS)])
    x = np.stack([_ecg_window_features(simulate_ecg(np.random.default_rng([21, i]), lab)) for i, lab in enumerate(y)])
    # Unscaled features: the classes must differ by whole millivolt-scale amounts, not by tiny but consistent ones.
    acc = _probe(x, y, scale=False)
    print(f"\nECG: held-out balanced accuracy of a linear probe on pooled 200 ms window statistics: {acc:.2f}")
    assert acc >= 0.8


# ----------------------------------------------------------------------------------------------------------------
# ECG


def test_ecg_files(bench):
    _, _, records = bench
    for r in _all(records):
        if r.domain == "ecg":
            x = load_ecg(r.resolve(r.ecg[0]))
            assert x.shape == (8, 2500) and x.dtype == np.float32
            assert 0.3 < np.abs(x).max() < 5.0


def _rr_cv(x: np.ndarray) -> float:
    lead = x[1] - signal.medfilt(x[1], 75)
    peaks, _ = signal.find_peaks(lead, height=0.5 * lead.max(), distance=int(0.25 * 250))
    rr = np.diff(peaks)
    return float(rr.std() / rr.mean())


def _qrs_width(x: np.ndarray) -> float:
    lead = x[1] - signal.medfilt(x[1], 75)
    peaks, _ = signal.find_peaks(lead, height=0.5 * lead.max(), distance=int(0.25 * 250))
    return float(np.median(signal.peak_widths(lead, peaks, rel_height=0.5)[0])) / 250


def _st_elevation(x: np.ndarray) -> float:
    peaks, _ = signal.find_peaks(x[1], height=0.5 * x[1].max(), distance=int(0.25 * 250))
    peaks = peaks[(peaks > 25) & (peaks < 2500 - 50)]
    st = np.mean([x[:, p + 28:p + 38].mean(axis=1) - x[:, p - 15:p - 10].mean(axis=1) for p in peaks], axis=0)
    return float(st.max())


def _st_depression(x: np.ndarray) -> float:
    """Most negative mean ST level (80-180 ms after R, against the PR segment) over the leads, in mV."""
    peaks, _ = signal.find_peaks(x[1], height=0.5 * x[1].max(), distance=int(0.25 * 250))
    peaks = peaks[(peaks > 25) & (peaks < 2500 - 50)]
    st = np.mean([x[:, p + 20:p + 45].mean(axis=1) - x[:, p - 15:p - 10].mean(axis=1) for p in peaks], axis=0)
    return float(st.min())


def _voltage(x: np.ndarray) -> float:
    """Sokolow-Lyon-like voltage: deepest S in V1/V2 plus tallest R in V5/V6 (robust 1st/99th percentiles), mV."""
    return float(-np.percentile(x[2:4], 1, axis=1).min() + np.percentile(x[6:8], 99, axis=1).max())


@pytest.fixture(scope="module")
def ecgs():
    out = {}
    for label in LABELS["ecg"]:
        out[label] = [simulate_ecg(np.random.default_rng(1000 + i), label, hard=i % 3 == 0) for i in range(15)]
    return out


def test_ecg_class_features_are_measurable(ecgs):
    cv = {lab: np.mean([_rr_cv(x) for x in xs]) for lab, xs in ecgs.items()}
    assert cv["A. Fib/Aflutter"] > 2.5 * cv["Normal"]
    width = {lab: np.median([_qrs_width(x) for x in xs]) for lab, xs in ecgs.items()}
    assert width["Conduction Delay"] > 1.5 * width["Normal"]
    st = {lab: np.mean([_st_elevation(x) for x in xs]) for lab, xs in ecgs.items()}
    assert st["Myocardial Infarction"] > st["Normal"] + 0.1
    assert st["ST/T change"] < st["Normal"] + 0.05  # depression only, never elevation
    depression = {lab: np.mean([_st_depression(x) for x in xs]) for lab, xs in ecgs.items()}
    assert depression["ST/T change"] < depression["Normal"] - 0.1
    assert depression["Hypertrophy"] < depression["Normal"] - 0.05  # lateral strain
    voltage = {lab: np.mean([_voltage(x) for x in xs]) for lab, xs in ecgs.items()}
    assert voltage["Hypertrophy"] > 1.4 * voltage["Normal"]
    assert voltage["ST/T change"] < 1.2 * voltage["Normal"]
    assert width["Hypertrophy"] < 1.3 * width["Normal"] < width["Conduction Delay"]  # high voltage, narrow QRS
    for xs in ecgs.values():
        assert all(x.shape == (8, 2500) and x.dtype == np.float32 and np.isfinite(x).all() for x in xs)


def test_ecg_rhythm_rate(ecgs):
    for x in ecgs["Normal"]:
        lead = x[1] - signal.medfilt(x[1], 75)
        peaks, _ = signal.find_peaks(lead, height=0.5 * lead.max(), distance=int(0.25 * 250))
        assert 9 <= len(peaks) <= 16  # 60-90 bpm over 10 s (one premature beat in hard rows)


def test_simulate_ecg_rejects_unknown_label():
    with pytest.raises(ValueError, match="unknown ECG label"):
        simulate_ecg(np.random.default_rng(0), "Bradycardia")


# ----------------------------------------------------------------------------------------------------------------
# Determinism and configuration


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    small = dict(n_train=40, n_val=36, n_test=36, seed=11)
    generate_climb_mini(tmp_path / "a", **small)
    generate_climb_mini(tmp_path / "b", **small)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    generate_climb_mini(tmp_path / "c", **{**small, "seed": 12})
    assert _tree(tmp_path / "c")["train.jsonl"] != a["train.jsonl"]


def test_existing_output_needs_overwrite(tmp_path):
    small = dict(n_train=36, n_val=36, n_test=36)
    generate_climb_mini(tmp_path, **small)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_climb_mini(tmp_path, **small)
    stats = generate_climb_mini(tmp_path, **{**small, "n_train": 45}, overwrite=True)
    assert stats["splits"]["train"]["rows"] == 45 == len(load_records(tmp_path / "train.jsonl"))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_config_sizes_are_honoured(tmp_path):
    cfg = ClimbMiniConfig(n_train=36, n_val=36, n_test=36, image_size=56, volume_size=84, volume_slices=3,
                          ultrasound_frames=1, seed=5)
    generate_climb_mini(tmp_path, config=cfg)
    recs = load_records(tmp_path / "train.jsonl")
    for r in recs:
        if r.domain in ("ct", "mri"):
            assert len(r.images) == 3 and load_image(r.resolve(r.images[0])).size == (84, 84)
            assert "3 axial slices" in r.problem
        elif r.domain == "ultrasound":
            assert len(r.images) == 1 and "This is a breast ultrasound image." in r.problem
        elif r.domain != "ecg":
            assert load_image(r.resolve(r.images[0])).size == (56, 56)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"image_size": 100}, "image_size=100 must be a multiple of 28"),
        ({"volume_size": 28}, "volume_size=28"),
        ({"n_val": 10}, "n_val=10 is too small"),
        ({"domain_weights": {"xray": 1.0}}, r"unknown domain\(s\) \['xray'\]"),
        ({"domain_weights": {"ct": -1.0}}, "must be a finite number >= 0"),
        ({"hard_fraction": 1.5}, "hard_fraction must be in"),
        ({"volume_slices": 0}, "volume_slices must be a positive integer"),
    ],
)
def test_config_validation(tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        generate_climb_mini(tmp_path, config=ClimbMiniConfig(**over))
    assert not (tmp_path / "train.jsonl").exists()


def test_custom_domain_weights(tmp_path):
    stats = generate_climb_mini(tmp_path, n_train=100, n_val=36, n_test=36, domain_weights={"mri": 1.0})
    rows = {d: v["rows"] for d, v in stats["splits"]["train"]["domains"].items()}
    assert rows["mri"] == 100 - 8 * 4 and all(rows[d] == 4 for d in DOMAINS if d != "mri")


def test_cli_generate_mix_and_refusals(tmp_path):
    from typer.testing import CliRunner

    from qoqmed.cli import app

    runner = CliRunner()
    out = tmp_path / "bench"
    args = ["data", "generate", str(out), "--n-train", "54", "--n-val", "18", "--n-test", "18", "--min-per-domain",
            "2", "--mix", "mri=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    train = Counter(r.domain for r in load_records(out / "train.jsonl", check_files=False))
    assert train["mri"] == 54 - 2 * 8 and all(train[d] == 2 for d in DOMAINS if d != "mri")
    assert "datasheet.md" in {p.name for p in out.iterdir()}
    again = runner.invoke(app, args)  # refuses to overwrite without --overwrite
    assert again.exit_code == 2 and "already holds" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    bad = runner.invoke(app, ["data", "generate", str(tmp_path / "x"), "--mix", "mri"])
    assert bad.exit_code == 2 and "domain=weight" in bad.output
    unknown = runner.invoke(app, ["data", "generate", str(tmp_path / "y"), "--mix", "brain=1"])
    assert unknown.exit_code == 2 and "unknown domain" in unknown.output
