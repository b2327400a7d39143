"""QoQMedPipeline, batch prediction and the `qoqmed predict` command, on real sample files shipped in wheels."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data.readers import load_ecg
from qoqmed.infer import InputError, QoQMedPipeline, Query, draw_boxes, save_overlay
from qoqmed.infer.batch import run_batch
from qoqmed.modeling.tiny import build_tiny

CT = get_testdata_file("CT_small.dcm")          # 128 x 128 CT slice
MR = get_testdata_file("MR_small.dcm")          # 64 x 64 MR slice
ECG_DCM = get_testdata_file("waveform_ecg.dcm")  # 12-lead DICOM waveform, 1000 Hz


def _nifti() -> str:
    from nibabel.testing import data_path

    return os.path.join(data_path, "anatomical.nii")


def _retina() -> np.ndarray:
    from skimage import data

    return data.retina()  # 1411 x 1411 RGB fundus photograph, bundled with scikit-image


@pytest.fixture(scope="module")
def tiny():
    processor, model = build_tiny(seed=0)
    return processor, model


@pytest.fixture(scope="module")
def pipe(tiny):
    processor, model = tiny
    return QoQMedPipeline(model, processor, max_new_tokens=12)


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    processor, model = tiny
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wfdb_record(tmp_path_factory):
    """The 12-lead DICOM waveform rewritten as a WFDB record (.hea + .dat), so both readers see real ECG data."""
    import wfdb
    from qoqmed.data.ecg import ECGSpec, STANDARD_LEADS, read_ecg

    sig = read_ecg(ECG_DCM, ECGSpec(sampling_rate=500, seconds=10.0, leads=STANDARD_LEADS))
    folder = tmp_path_factory.mktemp("wfdb")
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=sig.data.T.astype(float),
                fmt=["16"] * 12, write_dir=str(folder))
    return folder / "rec.hea"


def scripted(pipe: QoQMedPipeline, answer: str):
    """Make the model 'write' ``answer`` (+ <|im_end|>) for every prompt, to test parsing and box conversion."""
    tok = pipe.processor.tokenizer
    ids = torch.tensor(tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")])

    def generate(input_ids, **kwargs):
        return torch.cat([input_ids, ids.repeat(input_ids.shape[0], 1)], dim=1)

    return generate


def test_real_files_every_format(pipe, wfdb_record):
    pred = pipe("Which findings are present?", images=[CT, MR, _retina()], volumes=_nifti(),
                ecg=[ECG_DCM, wfdb_record], ehr="62-year-old, chest pain for 2 hours.")
    assert [im["source"] for im in pred.images] == ["images[0]", "images[1]", "images[2]"] + [
        f"volumes[0] slice {k}/4" for k in range(1, 5)]
    assert (pred.images[0]["width"], pred.images[0]["height"]) == (128, 128)
    assert (pred.images[1]["width"], pred.images[1]["height"]) == (64, 64)
    assert (pred.images[2]["width"], pred.images[2]["height"]) == (1411, 1411)
    # Every image size the model sees obeys the processor's pixel budget and 28-pixel grid.
    for im in pred.images:
        assert im["model_width"] % 28 == 0 and im["model_height"] % 28 == 0
    assert len(pred.ecgs) == 2 and all(e.shape == (8, 2500) for e in pred.ecgs)
    # Both ECG files hold the same recording: the WFDB copy decodes to the DICOM one (16-bit storage rounding).
    np.testing.assert_allclose(pred.ecgs[0], pred.ecgs[1], atol=0.02)
    assert pred.completion_tokens <= 12 and pred.finish_reason in ("stop", "length")
    assert set(pred.timing) >= {"prepare_s", "generate_s", "total_s", "batch_size"}
    d = pred.to_dict()
    assert "visuals" not in d and json.loads(json.dumps(d))["images"][0]["width"] == 128


def test_prompt_places_inputs_and_notes(pipe):
    q = pipe.prepare("What is the rhythm?", ecg=np.zeros((8, 2500), np.float32) + 0.1, ehr="on digoxin")
    assert q.problem == "<ecg>\nWhat is the rhythm?\nClinical notes: on digoxin"
    assert q.prompt.count("<|ecg_pad|>") == 1 and "<|image_pad|>" not in q.prompt
    # Explicit placeholders are honoured in place; a volume expands to one image per slice.
    q = pipe.prepare("Compare <volume> with <image>.", images=CT, volumes=_nifti())
    assert q.problem == "Compare <image><image><image><image> with <image>."
    assert [v.source for v in q.visuals][-1] == "images[0]"


def test_boxes_come_back_in_original_pixels(pipe, monkeypatch, tmp_path):
    retina = _retina()
    mw, mh = pipe.processor.model_image_size(1411, 1411)
    answer = ('<think>```json\n[{"bbox_2d": [%d, %d, %d, %d], "label": "exudate"}]\n```\nBright lesions.</think>\n'
              '\\boxed{Moderate DR, Macular edema}' % (mw // 4, mh // 4, mw // 2, 3 * mh // 4))
    monkeypatch.setattr(pipe.model, "generate", scripted(pipe, answer))
    pred = pipe("Grade the retinopathy.", images=Image.fromarray(retina))
    assert pred.labels == ["Moderate DR", "Macular edema"] and pred.diagnosis == "Moderate DR, Macular edema"
    assert pred.reasoning.endswith("Bright lesions.") and pred.format_ok and pred.finish_reason == "stop"
    (box,) = pred.boxes
    sx, sy = 1411 / mw, 1411 / mh
    assert box["label"] == "exudate" and box["image"] == 0
    assert box["model_bbox_2d"] == [mw // 4, mh // 4, mw // 2, 3 * mh // 4]
    np.testing.assert_allclose(box["bbox_2d"], [mw // 4 * sx, mh // 4 * sy, mw // 2 * sx, 3 * mh // 4 * sy], atol=0.06)

    out = save_overlay(pred, tmp_path / "overlay.png")
    img = np.asarray(Image.open(out))
    assert img.shape[:2] == (1411, 1411)
    x1, y1, x2, y2 = (int(round(v)) for v in box["bbox_2d"])
    edge = img[(y1 + y2) // 2, x1 + 1]
    assert tuple(edge) == (0xE6, 0x9F, 0x00)  # the first box colour on the left edge
    assert not np.array_equal(img, retina)


def test_boxes_are_clipped_and_ordered():
    img = Image.new("RGB", (40, 30), "gray")
    drawn = np.asarray(draw_boxes(img, [{"bbox_2d": [5, 5, 20, 20], "label": "x"}], min_side=30))
    assert drawn.shape == (30, 40, 3)


def test_clear_errors_name_the_input(pipe, tmp_path):
    with pytest.raises(InputError) as e:
        pipe("q", images=tmp_path / "missing.png")
    assert e.value.field == "images[0]" and "not found" in str(e.value)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match=r"images\[1\].*not a recognised image format"):
        pipe("q", images=[CT, bad])
    with pytest.raises(InputError, match=r"ecg\[0\].*\(2500, 8\).*transposed"):
        pipe("q", ecg=np.zeros((2500, 8)))
    nan = np.zeros((8, 2500))
    nan[3, 7] = np.nan
    with pytest.raises(InputError, match=r"ecg\[0\].*non-finite"):
        pipe("q", ecg=nan)
    with pytest.raises(InputError, match=r"question.*2 <image> placeholder.*1 images"):
        pipe("<image> vs <image>", images=CT)
    with pytest.raises(InputError, match=r"volumes\[0\].*\(slices, H, W\)"):
        pipe("q", volumes=np.zeros((4, 4)))
    with pytest.raises(InputError, match="question"):
        pipe("   ")


def test_ecg_dict_is_resampled_and_lead_mapped(pipe):
    from qoqmed.data.ecg import ECGSpec, STANDARD_LEADS, read_ecg

    sig = read_ecg(ECG_DCM, ECGSpec(sampling_rate=500, seconds=10.0, leads=STANDARD_LEADS))
    q = pipe.prepare("rhythm?", ecg={"signal": sig.data, "fs": 500, "leads": list(STANDARD_LEADS)})
    np.testing.assert_allclose(q.ecgs[0], load_ecg(ECG_DCM), atol=1e-3)


def _csv_ecg(path, fs: int = 500):
    """The pydicom sample ECG as a CSV file at ``fs`` Hz, 12 leads in the standard order, header row of names."""
    from qoqmed.data.ecg import ECGSpec, STANDARD_LEADS, read_ecg

    sig = read_ecg(ECG_DCM, ECGSpec(sampling_rate=fs, seconds=10.0, leads=STANDARD_LEADS))
    np.savetxt(path, sig.data.T, delimiter=",", header=",".join(STANDARD_LEADS), comments="", fmt="%.5f")
    return path


def test_conversation_history_builds_one_prompt_in_turn_order(pipe):
    img = Image.new("RGB", (64, 48), (90, 40, 40))
    ecg = np.zeros((8, 2500), np.float32) + 0.1
    q = pipe.prepare("And the rhythm?", images=img, ecg=ecg,
                     history=[("<image>\nWhat is shown?", "\\boxed{Pleural Effusion}")])
    order = [q.prompt.index(x) for x in ("<|image_pad|>", "What is shown?", "\\boxed{Pleural Effusion}",
                                         "<|ecg_pad|>", "And the rhythm?")]
    assert order == sorted(order) and q.prompt.count("<|im_start|>user") == 2
    assert q.prompt.count("<|im_start|>assistant") == 2 and q.prompt.rstrip().endswith("<|im_start|>assistant")
    assert q.problem == "<ecg>\nAnd the rhythm?" and len(q.visuals) == 1
    assert pipe.generate([q])[0].images[0]["width"] == 64
    follow = pipe("And the rhythm?", images=img, ecg=ecg, max_new_tokens=4,
                  history=[("<image>\nWhat is shown?", "\\boxed{Pleural Effusion}")])
    assert follow.images[0]["width"] == 64 and follow.completion_tokens <= 4
    with pytest.raises(InputError, match=r"history.*2 <image> but 1 images"):
        pipe.prepare("q", images=img, history=[("<image><image>", "a")])
    with pytest.raises(InputError, match=r"history\[0\].*pair"):
        pipe.prepare("q", history=["just text"])


def test_sampling_is_seeded_and_greedy_by_default(pipe):
    greedy = pipe("Which findings are present?", images=CT, max_new_tokens=10)
    assert pipe("Which findings are present?", images=CT, max_new_tokens=10).text == greedy.text
    sampled = [pipe("Which findings are present?", images=CT, max_new_tokens=10, temperature=1.0, seed=s).text
               for s in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1]  # same seed, same answer
    assert len(set(sampled[1:]) | {greedy.text}) > 1  # a random-init model samples something other than its argmax
    with pytest.raises(InputError, match="temperature"):
        pipe("q", temperature=-0.5)
    with pytest.raises(InputError, match="top_p"):
        pipe("q", temperature=1.0, top_p=0.0)


def test_ecg_csv_path_needs_its_rate_and_is_resampled(pipe, tmp_path):
    csv_path = _csv_ecg(tmp_path / "ecg.csv")
    with pytest.raises(InputError, match=r"ecg\[0\].*ecg.csv.*sampling rate.*--ecg-fs"):
        pipe.prepare("rhythm?", ecg=csv_path)
    q = pipe.prepare("rhythm?", ecg={"path": csv_path, "fs": 500})
    np.testing.assert_allclose(q.ecgs[0], load_ecg(ECG_DCM), atol=1e-3)  # same recording as the DICOM
    with pytest.raises(InputError, match=r"ecg\[0\].*unknown ECG key.*'rate'"):
        pipe.prepare("rhythm?", ecg={"path": csv_path, "rate": 500})
    (tmp_path / "bad.csv").write_text("I,II\n0.1\n")
    with pytest.raises(InputError, match=r"ecg\[0\].*bad.csv"):
        pipe.prepare("rhythm?", ecg={"path": tmp_path / "bad.csv", "fs": 500})


def test_predict_batch_keeps_order_and_isolates_bad_rows(pipe, tmp_path):
    rows = [Query("Which findings?", images=CT, id="a"), Query("q", images=tmp_path / "nope.dcm", id="b"),
            Query("Which findings?", images=CT, id="c"), {"question": "rhythm?", "ecg": ECG_DCM, "id": "d"}]
    out = pipe.predict_batch(rows, batch_size=3)
    assert [getattr(r, "text", None) for r in pipe(rows)] == [getattr(r, "text", None) for r in out]
    assert [getattr(r, "id", None) for r in out] == ["a", None, "c", "d"]
    assert isinstance(out[1], InputError) and "nope.dcm" in str(out[1])
    assert out[0].text == out[2].text == pipe("Which findings?", images=CT).text
    assert out[0].timing["batch_size"] == 2  # the bad row left its batch; the two good ones shared a call


def _rows(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "ecg.npy", load_ecg(ECG_DCM))
    rows = [{"id": "ct", "question": "Which findings?", "images": [CT]},
            {"id": "ecg", "problem": "<ecg>\nWhat is the rhythm?", "ecg": ["ecg.npy"], "answer": "Normal"},
            {"id": "missing", "question": "q", "images": ["nope.png"]},
            "not json {",
            {"id": "mri", "question": "Tumour?", "volumes": [_nifti()], "ehr": "headache"}]
    path = tmp_path / "in" / "rows.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_batch_file_one_row_per_input_and_resumable(pipe, tmp_path):
    rows = _rows(tmp_path)
    out = tmp_path / "out"
    s = run_batch(pipe, rows, out, batch_size=2, show_progress=False)
    assert (s.rows, s.skipped, s.predicted, s.failed) == (5, 0, 3, 2)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["row"] for r in lines] == [0, 1, 2, 3, 4]
    assert [r["id"] for r in lines] == ["ct", "ecg", "missing", "3", "mri"]
    assert [r["ok"] for r in lines] == [True, True, False, False, True]
    assert "nope.png" in lines[2]["error"] and lines[2]["field"] == "images[0]"
    assert lines[3]["field"] == "row" and lines[3]["error"].startswith("row 3: row: invalid JSON")
    assert len(lines[4]["images"]) == 4

    # A rerun does nothing; after an interruption (last row lost, a torn line) only the missing row is redone.
    s = run_batch(pipe, rows, out, show_progress=False)
    assert (s.skipped, s.predicted) == (5, 0)
    kept = (out / "predictions.jsonl").read_text().splitlines()[:4]
    (out / "predictions.jsonl").write_text("\n".join(kept) + '\n{"row": 4, "id": "mr')
    s = run_batch(pipe, rows, out, show_progress=False)
    assert (s.skipped, s.predicted) == (4, 1)
    again = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert again[4]["text"] == lines[4]["text"] and len(again) == 5

    # Fix a failed row's input and retry only the failures: the fixed row is answered, the bad JSON stays failed.
    Image.new("RGB", (50, 40), "white").save(tmp_path / "in" / "nope.png")
    s = run_batch(pipe, rows, out, show_progress=False, retry_failed=True)
    assert (s.skipped, s.predicted, s.failed) == (3, 1, 1)
    again = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in again] == [True, True, True, False, True] and again[2]["images"][0]["width"] == 50

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "zzz", "question": "q"}) + "\n")
    with pytest.raises(ValueError, match="another file"):
        run_batch(pipe, other, out, show_progress=False)


def test_cli_predict_json_and_overlay(model_dir, tmp_path):
    runner = CliRunner()
    overlay = tmp_path / "ov.png"
    res = runner.invoke(app, ["predict", "--model", str(model_dir), "--image", CT, "--ecg", ECG_DCM,
                              "--max-new-tokens", "8", "--overlay", str(overlay), "--json", "Which findings?"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["images"][0]["width"] == 128 and body["overlay"] == str(overlay)
    assert Image.open(overlay).size == (384, 384)  # small images are upscaled so labels stay legible

    csv_path = _csv_ecg(tmp_path / "rec.csv")
    res = runner.invoke(app, ["predict", "--model", str(model_dir), "--ecg", str(csv_path), "--max-new-tokens", "4",
                              "--json", "Rhythm?"])
    assert res.exit_code == 2 and "--ecg-fs" in res.output
    res = runner.invoke(app, ["predict", "--model", str(model_dir), "--ecg", str(csv_path), "--ecg-fs", "500",
                              "--max-new-tokens", "4", "--json", "Rhythm?"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["completion_tokens"] <= 4
    sample = ["predict", "--model", str(model_dir), "--image", CT, "--max-new-tokens", "6", "--json", "--no-overlay",
              "--temperature", "0.9", "--seed", "4", "Findings?"]
    texts = [json.loads(runner.invoke(app, sample).stdout)["text"] for _ in range(2)]
    assert texts[0] == texts[1]
    res = runner.invoke(app, [*sample[:-1], "--top-p", "0", "Findings?"])
    assert res.exit_code == 2 and "--top-p" in res.output

    res = runner.invoke(app, ["predict", "--model", str(model_dir), "--volume", _nifti(), "--window", "brain",
                              "--max-new-tokens", "4", "--overlay", str(tmp_path / "v.png"), "Tumour?"])
    assert res.exit_code == 0, res.output
    assert "diagnosis" in res.output and "reasoning" in res.output and "overlay:" in res.output
    assert (tmp_path / "v.png").exists()
    res = runner.invoke(app, ["predict", "--model", str(model_dir), "--image", str(tmp_path / "x.png"), "q"])
    assert res.exit_code == 2 and "images[0]" in res.output and "not found" in res.output
    res = runner.invoke(app, ["predict", "--model", str(tmp_path), "q"])
    assert res.exit_code == 2 and "config.json" in res.output


def test_cli_predict_batch_subprocess(model_dir, tmp_path):
    """The installed entry point end to end, as a user runs it."""
    rows = _rows(tmp_path)
    exe = Path(sys.executable).with_name("qoqmed")
    cmd = [str(exe), "predict", "--model", str(model_dir), "--batch", str(rows), "--out", str(tmp_path / "o"),
           "--max-new-tokens", "8"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    # Bad rows do not stop the run: every good row is written, and the exit status says that some failed.
    assert res.returncode == 1, res.stderr
    assert "5 rows: 3 predicted, 0 already done, 2 failed" in res.stdout.replace("\n", " ")
    assert len((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()) == 5
    res = CliRunner().invoke(app, cmd[1:] + ["--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["skipped"] == 5
    assert json.loads(res.stdout)["failed_before"] == 2


def test_cli_predict_prompt_style_reaches_the_pipeline(model_dir, tmp_path, monkeypatch):
    from qoqmed.data.prompt_styles import (
        RELEASED_FORMAT_SUFFIX,
        RELEASED_SYSTEM_PROMPT,
        SYSTEM_PROMPT,
    )

    prompts = []
    prepare = QoQMedPipeline.prepare

    def recording(self, *args, **kwargs):
        prepared = prepare(self, *args, **kwargs)
        prompts.append((self.prompt_style, prepared.prompt))
        return prepared

    monkeypatch.setattr(QoQMedPipeline, "prepare", recording)
    runner = CliRunner()
    base = ["predict", "--model", str(model_dir), "--image", CT, "--max-new-tokens", "4", "--json", "--no-overlay"]
    res = runner.invoke(app, [*base, "--prompt-style", "released", "Findings?"])
    assert res.exit_code == 0, res.output
    (style, prompt), = prompts
    assert style == "released"
    assert f"<|im_start|>system\n{RELEASED_SYSTEM_PROMPT}<|im_end|>" in prompt and SYSTEM_PROMPT not in prompt
    assert "Findings?" + RELEASED_FORMAT_SUFFIX in prompt
    res = runner.invoke(app, [*base, "Findings?"])  # the default stays qoqmed's own
    assert res.exit_code == 0, res.output
    assert prompts[1][0] == "qoqmed" and SYSTEM_PROMPT in prompts[1][1] and RELEASED_FORMAT_SUFFIX not in prompts[1][1]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "a", "question": "Findings?", "images": [CT]}) + "\n")
    res = runner.invoke(app, ["predict", "--model", str(model_dir), "--batch", str(rows), "--out", str(tmp_path / "o"),
                              "--max-new-tokens", "4", "--no-overlay", "--json", "--prompt-style", "released"])
    assert res.exit_code == 0, res.output
    assert prompts[2][0] == "released" and RELEASED_FORMAT_SUFFIX in prompts[2][1]
    res = runner.invoke(app, [*base, "--prompt-style", "official", "Findings?"])
    assert res.exit_code == 2 and "--prompt-style must be one of qoqmed, released, got 'official'" in res.output
    assert len(prompts) == 3  # refused before any model was loaded


def test_from_pretrained_engine_choices_are_checked(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="engine='tensorrt'; choose one of"):
        QoQMedPipeline.from_pretrained(tmp_path, engine="tensorrt")
    with pytest.raises(ValueError, match="LoRA adapter folder; vLLM loads full model folders"):
        QoQMedPipeline.from_pretrained(tmp_path, engine="vllm")
    with pytest.raises(ValueError, match="device applies to the transformers engine"):
        QoQMedPipeline.from_pretrained(tmp_path, engine="vllm", device="cpu")
