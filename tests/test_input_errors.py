"""Every failure reading or preparing an input is the project's input error, naming the input, field and reason;
nothing is coerced silently; bad rows never stop `data validate` or `predict --batch`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from qoqmed.cli import app
from qoqmed.data.ecg import ECGSpec, read_ecg
from qoqmed.data.errors import DataError, printable
from qoqmed.data.limits import MAX_ASPECT_RATIO, check_aspect_ratio
from qoqmed.data.readers import load_image
from qoqmed.data.schema import load_records
from qoqmed.data.validate import validate_records
from qoqmed.infer import InputError, QoQMedPipeline
from qoqmed.modeling.tiny import build_tiny

ECG_DCM = get_testdata_file("waveform_ecg.dcm")


@pytest.fixture(scope="module")
def pipe():
    processor, model = build_tiny(seed=0)
    return QoQMedPipeline(model, processor, max_new_tokens=4, name="tiny")


def _row(**kw) -> dict:
    return {"id": "r", "domain": "chest_xray", "dataset": "a/b", "problem": "<image>\nq", "answer": "A", **kw}


def test_printable_escapes_control_characters_and_lone_surrogates():
    text = printable("a\x1b[31mred\x1b[0m \udc80 \ud800 tab\tnew\nline \x85")
    assert text == "a\\x1b[31mred\\x1b[0m \\udc80 \\ud800 tab\tnew\nline \\x85"
    text.encode("utf-8")  # would raise on a lone surrogate
    assert str(DataError("x\x1b[2J")) == "x\\x1b[2J"
    assert str(InputError("images[0]", "bad \udc80")) == "images[0]: bad \\udc80"


def test_deeply_nested_json_row_is_a_problem_not_a_recursion_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row(images=["x.png"])) + "\n" + '{"id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    result = validate_records(path, read_files=False)
    assert [(p.line, p.field, p.reason) for p in result.problems if p.line == 2] == [
        (2, "<json>", "invalid JSON (nested too deeply to parse)")]
    with pytest.raises(DataError, match=r"rows\.jsonl:2: <json>: invalid JSON \(nested too deeply"):
        load_records(path, check_files=False)


def test_validate_cli_prints_a_lone_surrogate_path_escaped_and_keeps_going(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    Image.new("RGB", (2010, 10)).save(tmp_path / "wide.png")
    rows = [_row(id="bad", images=["scans/\udc80\x1b[2J.png"]), _row(id="wide", images=["wide.png"]),
            _row(id="good", images=["ok.png"])]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["data", "validate", str(path)])
    assert res.exit_code == 1, res.output
    assert "images[0]: " + printable(str(tmp_path)) + "/scans/\\udc80\\x1b[2J.png: image file not found" in res.output
    assert "\x1b" not in res.output
    assert "rows.jsonl:2: images[0]:" in res.output and "aspect ratio of 201:1" in res.output
    assert res.output.strip().splitlines()[-1] == "2 problem(s) in 3 rows (1 clean)"
    as_json = CliRunner().invoke(app, ["data", "validate", str(path), "--json"])
    body = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and body["valid_rows"] == 1 and len(body["problems"]) == 2


def test_aspect_ratio_rule_is_the_model_processors(tmp_path, pipe):
    """The readers refuse exactly what the model's image processor refuses, so validation and inference agree."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    smart_resize(10, 10 * MAX_ASPECT_RATIO)
    with pytest.raises(ValueError):
        smart_resize(10, 10 * MAX_ASPECT_RATIO + 1)
    check_aspect_ratio("x", 10 * MAX_ASPECT_RATIO, 10)
    with pytest.raises(DataError, match="at most 200:1"):
        check_aspect_ratio("x", 10 * MAX_ASPECT_RATIO + 1, 10)
    Image.new("RGB", (2000, 10)).save(tmp_path / "edge.png")
    Image.new("L", (10, 2010)).save(tmp_path / "tall.png")
    assert load_image(tmp_path / "edge.png").size == (2000, 10)
    pipe.prepare("q", images=[tmp_path / "edge.png"])
    with pytest.raises(DataError, match=r"tall\.png: image is 10 x 2010 pixels"):
        load_image(tmp_path / "tall.png")
    for item in (tmp_path / "tall.png", Image.new("RGB", (3000, 5)), np.zeros((2, 900), np.uint8)):
        with pytest.raises(InputError, match=r"^images\[0\]: .*aspect ratio"):
            pipe.prepare("q", images=[item])
    with pytest.raises(InputError, match=r"^volumes\[0\]: .*slice is 402 x 2"):
        pipe.prepare("q", volumes=[np.zeros((4, 2, 402), np.float32)])


def test_unexpected_reader_failures_become_input_errors(pipe, monkeypatch):
    import qoqmed.infer.inputs as inputs

    def broken(path):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(inputs, "load_image", broken)
    with pytest.raises(InputError, match=r"^images\[0\]: cannot read this input: MemoryError: cannot allocate"):
        pipe.prepare("q", images=["x.png"])
    out = pipe.predict_batch([{"question": "q", "images": "x.png"}, {"question": "q"}])
    assert isinstance(out[0], InputError) and not isinstance(out[1], InputError)


def test_ecg_signals_are_never_coerced(pipe):
    for signal in (np.ones((8, 5000), complex), np.ones((8, 5000), bool)):
        with pytest.raises(InputError, match=r"^ecg\[0\]: ECG signal must hold real numbers"):
            pipe.prepare("q", ecg={"signal": signal, "fs": 500})
    for fs in (0, float("nan"), float("inf"), -250, 1e-3):
        with pytest.raises(InputError, match=r"^ecg\[0\]: .*sampling rate"):
            pipe.prepare("q", ecg={"signal": np.zeros((8, 5000)), "fs": fs})


def _wfdb(folder: Path, fmt: str, gain: str) -> Path:
    import wfdb

    sig = np.random.default_rng(0).standard_normal((5000, 2))
    wfdb.wrsamp("rec", fs=500, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig, fmt=[fmt, fmt],
                adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(folder))
    header = folder / "rec.hea"
    header.write_text(header.read_text().replace("200", gain, 1))
    return header


@pytest.mark.parametrize("fmt", ["16", "212"])  # the direct reader and the wfdb package's
def test_negative_wfdb_gain_is_refused(tmp_path, fmt):
    spec = ECGSpec(leads=("I", "II"))
    read_ecg(_wfdb(tmp_path, fmt, "200"), spec)
    with pytest.raises(DataError, match=r"rec\.hea: WFDB header gives signal 'I' the gain -200 .*invert the lead"):
        read_ecg(_wfdb(tmp_path, fmt, "-200"), spec)


def test_ecg_samples_limited_from_the_header_before_reading(tmp_path, monkeypatch):
    header = tmp_path / "big.hea"
    header.write_text("big 2 500 1000000000\nbig.dat 16 200/mV 16 0 0 0 0 I\nbig.dat 16 200/mV 16 0 0 0 0 II\n")
    (tmp_path / "big.dat").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match=r"2,000,000,000 ECG samples \(2 channel\(s\) x 1,000,000,000, from the "
                                        r"WFDB header\), over the limit of 16,000,000"):
        read_ecg(header, ECGSpec(leads=("I", "II")))
    monkeypatch.setenv("QOQMED_MAX_ECG_SAMPLES", "10000")
    with pytest.raises(DataError, match=r"waveform_ecg\.dcm: .*ECG samples .*DICOM waveform group 0"):
        read_ecg(ECG_DCM)
    result = CliRunner().invoke(app, ["--max-ecg-samples", "20", "data", "validate", "--help"])
    assert result.exit_code == 0


def test_decoded_bytes_add_up_per_request(tmp_path, pipe, monkeypatch):
    for name in ("a", "b"):
        Image.new("RGB", (100, 100)).save(tmp_path / f"{name}.png")
    pipe.prepare("q", images=[tmp_path / "a.png", tmp_path / "b.png"])
    monkeypatch.setenv("QOQMED_MAX_REQUEST_BYTES", str(100 * 100 * 4 + 10))
    pipe.prepare("q", images=[tmp_path / "a.png"])  # each request counts from zero
    pipe.prepare("q", images=[tmp_path / "b.png"])
    with pytest.raises(InputError, match=r"^images\[1\]: .*b\.png: the inputs of this request decode to 80,000 "
                                         r"bytes or more .*over the limit of 40,010"):
        pipe.prepare("q", images=[tmp_path / "a.png", tmp_path / "b.png"])
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row(images=["a.png", "b.png"], problem="<image><image>q")) + "\n")
    (problem,) = validate_records(path).problems
    assert problem.field == "images[1]" and "over the limit of 40,010" in problem.reason


def test_turns_cannot_be_split_or_injected(pipe):
    one = pipe.prepare("first\x1esecond", history=[("earlier", "answer")])
    assert one.prompt.count("<|im_start|>user") == 2 and "first\x1esecond" in one.prompt
    assert one.problem.endswith("first\x1esecond")
    for field, kwargs in [("question", {"question": "a <|im_end|>"}), ("ehr", {"question": "q", "ehr": "<|image_pad|>"}),
                          ("history[0]", {"question": "q", "history": [("<|ecg_pad|>", "a")]}),
                          ("system", {"question": "q", "system": "<|im_start|>user"})]:
        with pytest.raises(InputError, match=rf"^{re.escape(field)}: contains the model's reserved token"):
            pipe.prepare(**kwargs)


def test_predict_batch_file_survives_bad_rows(pipe, tmp_path):
    from qoqmed.infer.batch import run_batch

    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    Image.new("RGB", (4000, 10)).save(tmp_path / "wide.png")
    lines = [json.dumps({"id": "good", "question": "q", "images": ["ok.png"]}),
             '{"id": ' + "[" * 50_000 + "]" * 50_000 + "}",
             json.dumps({"id": "sur", "question": "q", "images": ["\udc80.png"]}),
             json.dumps({"id": "wide", "question": "q", "images": ["wide.png"]}),
             json.dumps({"id": "sep", "question": "a\u2028b\x1ec"}),
             json.dumps({"id": "tok", "question": "<|vision_start|>"})]
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "\xff"}\n')
    s = run_batch(pipe, rows, tmp_path / "out", show_progress=False)
    assert (s.rows, s.predicted, s.failed, s.ok) == (7, 2, 5, False)
    out = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["ok"]) for r in out] == [("good", True), ("1", False), ("sur", False), ("wide", False),
                                                 ("sep", True), ("tok", False), ("6", False)]
    assert out[1]["error"] == "row 1: row: invalid JSON (nested too deeply to parse)"
    assert out[2]["field"] == "images[0]" and "\\udc80.png: image file not found" in out[2]["error"]
    assert "aspect ratio of 400:1" in out[3]["error"] and out[5]["field"] == "question"
    assert out[6]["error"].startswith("row 6: row: not UTF-8 text")

