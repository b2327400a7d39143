"""The HTTP API with a real client (httpx) against a real uvicorn server on loopback."""

import asyncio
import base64
import copy
import io
import threading
import time

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from qoqmed.data.readers import load_ecg
from qoqmed.infer import QoQMedPipeline
from qoqmed.modeling.tiny import build_tiny
from qoqmed.serve import create_app
from qoqmed.serve.server import server_config

CT = get_testdata_file("CT_small.dcm")
ECG_DCM = get_testdata_file("waveform_ecg.dcm")
BODY_LIMIT = 2 << 20


def _nifti() -> str:
    import os

    from nibabel.testing import data_path

    return os.path.join(data_path, "anatomical.nii")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def csv_bytes(signal: np.ndarray) -> bytes:
    """A (12, samples) recording as CSV text: a header row of the standard lead names, one row per sample."""
    from qoqmed.data.ecg import STANDARD_LEADS

    buf = io.StringIO()
    np.savetxt(buf, signal.T, delimiter=",", header=",".join(STANDARD_LEADS), comments="", fmt="%.5f")
    return buf.getvalue().encode()


def png_bytes(size=(100, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def ct_series(n: int) -> list[bytes]:
    """``n`` slices of one CT series (CT_small with its position moved), in reverse order."""
    ds = pydicom.dcmread(CT)
    out, uid = [], generate_uid()
    for k in range(n):
        s = copy.deepcopy(ds)
        s.SeriesInstanceUID, s.SOPInstanceUID, s.InstanceNumber = uid, generate_uid(), n - k
        s.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 5.0 * (n - k)]
        buf = io.BytesIO()
        s.save_as(buf)
        out.append(buf.getvalue())
    return out


class ServerThread:
    """The project's uvicorn configuration (protocol and timeouts; ``kwargs`` as in ``server_config``) in a
    background thread on a free loopback port."""

    def __init__(self, app, **kwargs):
        self.server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning", **kwargs))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module", params=["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def server(request):
    """The tiny model served with each engine: every API test below runs against both."""
    processor, model = build_tiny(seed=0)
    if request.param == "vllm":
        model = request.getfixturevalue("tiny_vllm")[1]  # an engine over the same model, saved
    pipe = QoQMedPipeline(model, processor, max_new_tokens=8, name="tiny")
    app = create_app(pipe, max_body_bytes=BODY_LIMIT, max_batch=16, batch_wait_ms=20, max_new_tokens_limit=64)
    with ServerThread(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_healthz_and_page(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["max_body_bytes"] == BODY_LIMIT
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"ask\"" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_predict_dicom_image_and_every_ecg_form(client, tmp_path):
    import wfdb

    from qoqmed.data.ecg import STANDARD_LEADS, ECGSpec, read_ecg

    sig = read_ecg(ECG_DCM, ECGSpec(sampling_rate=500, seconds=10.0, leads=STANDARD_LEADS))
    wfdb.wrsamp("ecg01", fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=sig.data.T.astype(float),
                fmt=["16"] * 12, write_dir=str(tmp_path))
    ecg = load_ecg(ECG_DCM)
    body = {
        "question": "Which findings are present?",
        "images": [{"data": b64(open(CT, "rb").read()), "filename": "slice.dcm"}],
        "ecg": [{"dicom": b64(open(ECG_DCM, "rb").read())},
                {"hea": b64((tmp_path / "ecg01.hea").read_bytes()), "dat": b64((tmp_path / "ecg01.dat").read_bytes())},
                {"npy": b64(npy_bytes(ecg))},
                {"signal": sig.data[:, ::2].tolist(), "fs": 250, "leads": list(STANDARD_LEADS)},
                {"csv": b64(csv_bytes(sig.data)), "fs": 500}],
        "ehr": "Palpitations.", "return_previews": True,
    }
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["images"][0]["width"] == 128 and p["images"][0]["source"] == "images[0]"
    assert {"text", "reasoning", "diagnosis", "labels", "boxes", "timing", "finish_reason"} <= set(p)
    assert p["completion_tokens"] <= 8
    assert p["previews"]["images"][0].startswith("data:image/png;base64,")
    sigs = [np.array(e["signal"]) for e in p["previews"]["ecg"]]
    assert len(sigs) == 5 and all(s.shape == (8, 2500) for s in sigs)
    for s in sigs[1:]:
        np.testing.assert_allclose(s, sigs[0], atol=0.05)  # five encodings of one recording


def test_predict_volumes_nifti_and_dicom_series(client):
    import os

    from nibabel.testing import data_path

    nii = open(os.path.join(data_path, "anatomical.nii"), "rb").read()
    series = [b64(raw) for raw in ct_series(5)]
    r = client.post("/v1/predict", json={"question": "Tumour?", "volumes": [
        {"data": b64(nii), "filename": "brain.nii"}, {"series": series}]})
    assert r.status_code == 200, r.text
    sources = [im["source"] for im in r.json()["images"]]
    assert sources == [f"volumes[{v}] slice {k}/4" for v in (0, 1) for k in range(1, 5)]


def test_chat_completions_openai_shape(client):
    url = "data:image/png;base64," + b64(png_bytes())
    r = client.post("/v1/chat/completions", json={
        "model": "qoqmed-tiny", "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": [
                         {"type": "text", "text": "Look at "}, {"type": "image_url", "image_url": {"url": url}},
                         {"type": "text", "text": " and "}, {"type": "ecg", "ecg": {"npy": b64(npy_bytes(load_ecg(ECG_DCM)))}},
                         {"type": "text", "text": ". Diagnosis?"}]}]})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["object"] == "chat.completion" and c["model"] == "qoqmed-tiny" and c["id"].startswith("chatcmpl-")
    (choice,) = c["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert c["usage"]["completion_tokens"] <= 6
    assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
    assert c["qoqmed"]["images"][0]["width"] == 100 and c["qoqmed"]["text"] == choice["message"]["content"]
    # A plain string message works too.
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"] == "tiny"


def _npy_header_only(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


NPY_CLAIMING_10_10 = _npy_header_only((8, 10**10 // 8))


@pytest.mark.parametrize("payload, status, param, text", [
    ({"question": 123}, 422, "question", "valid string"),
    ({"question": "q", "images": [{"data": 5}]}, 422, "images[0].data", "valid string"),
    ({"question": "q", "images": "abc"}, 422, "images", "valid list"),
    ({"question": "q", "max_new_tokens": "8"}, 422, "max_new_tokens", "valid integer"),
    ({"question": "q", "max_new_tokens": 10_000}, 400, "max_tokens", "limit of 64"),
    ({"question": "q", "unknown": 1}, 422, "unknown", "Extra inputs"),
    ({}, 422, "question", "Field required"),
    ({"question": "q", "ecg": [{"npy": "AAAA", "dicom": "AAAA"}]}, 422, "ecg[0]", "exactly one of"),
    ({"question": "q", "ecg": [{"hea": "AAAA"}]}, 422, "ecg[0]", "both hea and dat"),
    ({"question": "q", "ecg": [{"signal": [[1.0, 2.0]]}]}, 422, "ecg[0]", "needs fs"),
    ({"question": "q", "ecg": [{"csv": "AAAA"}]}, 422, "ecg[0]", "csv needs fs"),
    ({"question": "q", "ecg": [{"csv": b64(b"I,II\n1,2,3\n"), "fs": 500}]}, 400, "ecg[0]", "3 data columns"),
    ({"question": "q", "ecg": [{"signal": [[0.0] * 600] * 8, "fs": 0.0006}]}, 400, "ecg[0]", "within 50..10000 Hz"),
    ({"question": "q", "ecg": [{"signal": [[0.0] * 600] * 8, "fs": 1e9}]}, 400, "ecg[0]", "within 50..10000 Hz"),
    ({"question": "q", "ecg": [{"npy": b64(npy_bytes(np.zeros((8, 600)))), "fs": 20000}]}, 400, "ecg[0]",
     "within 50..10000 Hz"),
    ({"question": "q", "ecg": [{"npy": b64(NPY_CLAIMING_10_10), "fs": 500}]}, 400, "ecg[0]", "over the limit"),
    ({"question": "q", "ecg": [{"npy": b64(NPY_CLAIMING_10_10)}]}, 400, "ecg[0]", "over the limit"),
    ({"question": "q", "images": ["%%%not-base64"]}, 400, "images[0]", "not valid base64"),
    ({"question": "q", "images": ["/etc/passwd"]}, 400, "images[0]", "base64"),
    ({"question": "q", "images": ["file:///etc/passwd"]}, 400, "images[0]", "not fetched"),
    ({"question": "q", "images": [b64(b"plain text, not a picture")]}, 400, "images[0]", "not a recognised image"),
    ({"question": "q", "ecg": [{"npy": b64(npy_bytes(np.zeros((2500, 8))))}]}, 400, "ecg[0]", "transposed"),
    ({"question": "q", "ecg": [{"dicom": b64(png_bytes())}]}, 400, "ecg[0].dicom", "not a .npy array or a DICOM"),
    ({"question": "q", "volumes": [{"data": b64(png_bytes()), "filename": "x.nii"}]}, 400, "volumes[0].data", "NIfTI"),
    ({"question": "<image><image>", "images": [b64(png_bytes())]}, 400, "question", "placeholder"),
    ({"question": "q", "volumes": [{"data": "NIFTI"}], "window": "nope"}, 400, "volumes[0]", "unknown window"),
    ({"question": "q", "volumes": [{"data": "NIFTI"}], "window": "40,x"}, 400, "window", "center,width"),
])
def test_bad_inputs_get_clear_4xx(client, payload, status, param, text):
    for vol in payload.get("volumes", []):
        if vol.get("data") == "NIFTI":
            vol["data"] = b64(open(_nifti(), "rb").read())
    r = client.post("/v1/predict", json=payload)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["param"] == param and text in err["message"], err
    assert "qoqmed-req-" not in err["message"] and "/tmp" not in err["message"]  # no server paths leak


@pytest.mark.parametrize("rate", ["0", "0.0006"])
def test_wfdb_header_rate_out_of_range_is_a_400(client, tmp_path, rate):
    import wfdb

    from qoqmed.data.ecg import ENCODER_LEADS

    wfdb.wrsamp("rec", fs=500, units=["mV"] * 8, sig_name=list(ENCODER_LEADS), p_signal=np.zeros((5000, 8)),
                fmt=["16"] * 8, write_dir=str(tmp_path))
    first, rest = (tmp_path / "rec.hea").read_text().split("\n", 1)
    hea = " ".join(first.split()[:2] + [rate] + first.split()[3:]) + "\n" + rest
    r = client.post("/v1/predict", json={"question": "q", "ecg": [
        {"hea": b64(hea.encode()), "dat": b64((tmp_path / "rec.dat").read_bytes())}]})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"].startswith("ecg[0]") and "WFDB header: sampling rate" in err["message"], err
    assert "/tmp" not in err["message"]


def test_wfdb_header_cannot_name_paths(client):
    hea = b"../../etc/evil 1 500 5000\n../../etc/evil.dat 16 200 16 0 0 0 0 I\n"
    r = client.post("/v1/predict", json={"question": "q", "ecg": [{"hea": b64(hea), "dat": b64(b"\0" * 100)}]})
    assert r.status_code == 400 and error_of(r)["param"] == "ecg[0].hea" and "plain file name" in r.text


def test_chat_conversation_with_inputs_in_an_earlier_turn(client, server):
    """A follow-up question: the image sent in the first user turn is still part of the prompt."""
    url = "data:image/png;base64," + b64(png_bytes())
    turns = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                          {"type": "text", "text": "What is shown?"}]},
             {"role": "assistant", "content": "\\boxed{Pleural Effusion}"},
             {"role": "user", "content": [{"type": "text", "text": "And the rhythm?"},
                                          {"type": "ecg", "ecg": {"npy": b64(npy_bytes(load_ecg(ECG_DCM)))}}]}]
    r = client.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 4})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["qoqmed"]["images"][0]["width"] == 100  # the first turn's image
    first = client.post("/v1/chat/completions", json={"messages": turns[:1], "max_tokens": 4}).json()
    assert c["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]  # the whole conversation is the prompt


def test_sampling_n_choices_and_seeds(client):
    """temperature > 0 samples: n choices differ from one another, and the same seed gives the same choices."""
    body = {"messages": [{"role": "user", "content": "Which findings are present?"}], "max_tokens": 8,
            "temperature": 1.0, "top_p": 0.95, "seed": 11, "n": 3}
    first = client.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    texts = [c["message"]["content"] for c in first.json()["choices"]]
    assert [c["index"] for c in first.json()["choices"]] == [0, 1, 2] and len(set(texts)) > 1
    assert first.json()["usage"]["completion_tokens"] == sum(c["qoqmed"]["completion_tokens"]
                                                             for c in first.json()["choices"])
    again = client.post("/v1/chat/completions", json=body)
    assert [c["message"]["content"] for c in again.json()["choices"]] == texts
    greedy = client.post("/v1/chat/completions", json={**body, "temperature": 0, "n": 1})
    assert greedy.json()["choices"][0]["message"]["content"] == client.post(
        "/v1/chat/completions", json={"messages": body["messages"], "max_tokens": 8}).json()["choices"][0][
        "message"]["content"]  # temperature 0 is the default: greedy
    r = client.post("/v1/chat/completions", json={**body, "temperature": 0})
    assert r.status_code == 400 and error_of(r)["param"] == "n" and "temperature" in error_of(r)["message"]
    for key, value in (("temperature", 3), ("top_p", 0), ("n", 9), ("seed", -1)):
        r = client.post("/v1/chat/completions", json={**body, key: value})
        assert r.status_code == 422 and error_of(r)["param"] == key
    # /v1/predict takes the same decoding fields
    req = {"question": "Which findings are present?", "max_new_tokens": 8, "temperature": 1.0, "seed": 3}
    a, b = (client.post("/v1/predict", json=req).json()["text"] for _ in range(2))
    assert a == b


def test_malformed_json_and_chat_rules(client):
    r = client.post("/v1/predict", content=b'{"question": "q", ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "malformed_json"
    bad_url = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}]}
    r = client.post("/v1/chat/completions", json={"messages": [bad_url]})
    assert r.status_code == 400 and error_of(r)["param"] == "messages[0].content[0].image_url.url"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 400 and error_of(r)["param"] == "stream"
    for turns in ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                  [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                  [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]):
        r = client.post("/v1/chat/completions", json={"messages": turns})
        assert r.status_code == 400 and "alternate" in error_of(r)["message"]
    url = "data:image/png;base64," + b64(png_bytes())
    turns = [{"role": "user", "content": "a"},
             {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": url}}]},
             {"role": "user", "content": "b"}]
    r = client.post("/v1/chat/completions", json={"messages": turns})
    assert r.status_code == 400 and error_of(r)["param"] == "messages[1].content[0]"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [{"type": "audio"}]}]})
    assert r.status_code == 422 and error_of(r)["param"].startswith("messages[0].content[0]")
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422 and error_of(r)["param"] == "messages"


def test_oversized_bodies_get_413(client, server):
    big = {"question": "q", "images": [b64(b"\0" * BODY_LIMIT)]}
    r = client.post("/v1/predict", json=big)
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b"x" * (128 << 10)

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
    r = client.post("/v1/predict", content=iter([b'{"question": ', b'"q", "max_new_tokens": 2}']),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text  # a small chunked body passes through intact
    assert client.get("/healthz").status_code == 200  # the server is fine afterwards


def test_multipart_form(client, tmp_path):
    import wfdb

    from qoqmed.data.ecg import STANDARD_LEADS, ECGSpec, read_ecg

    sig = read_ecg(ECG_DCM, ECGSpec(sampling_rate=500, seconds=10.0, leads=STANDARD_LEADS))
    wfdb.wrsamp("r1", fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=sig.data.T.astype(float),
                fmt=["16"] * 12, write_dir=str(tmp_path))
    files = [("images", ("ct.dcm", open(CT, "rb").read(), "application/dicom")),
             ("ecg", ("r1.hea", (tmp_path / "r1.hea").read_bytes())), ("ecg", ("r1.dat", (tmp_path / "r1.dat").read_bytes()))]
    r = client.post("/v1/predict/form", data={"question": "Findings?", "max_new_tokens": "5"}, files=files)
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["width"] == 128 and r.json()["completion_tokens"] <= 5
    # Several DICOM files under "volumes" are one series.
    files = [("volumes", (f"IM{k}.dcm", raw, "application/dicom")) for k, raw in enumerate(ct_series(6))]
    r = client.post("/v1/predict/form", data={"question": "Findings?", "max_new_tokens": "2"}, files=files)
    assert r.status_code == 200, r.text
    assert [im["source"] for im in r.json()["images"]] == [f"volumes[0] slice {k}/4" for k in range(1, 5)]
    csv_file = [("ecg", ("rec.csv", csv_bytes(sig.data), "text/csv"))]
    r = client.post("/v1/predict/form", data={"question": "Rhythm?", "max_new_tokens": "3", "ecg_fs": "500",
                                              "return_previews": "true"}, files=csv_file)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["previews"]["ecg"][0]["signal"]), load_ecg(ECG_DCM), atol=0.05)
    r = client.post("/v1/predict/form", data={"question": "Rhythm?"}, files=csv_file)
    assert r.status_code == 400 and error_of(r)["param"] == "ecg_fs" and "rec.csv" in error_of(r)["message"]
    r = client.post("/v1/predict/form", data={"question": "q"}, files=[("ecg", ("r1.hea", b"r1 1 500 10\n"))])
    assert r.status_code == 400 and "needs its .dat" in error_of(r)["message"]
    r = client.post("/v1/predict/form", data={"question": "q", "max_new_tokens": "many"})
    assert r.status_code == 422 and error_of(r)["param"] == "max_new_tokens"


def test_concurrent_requests_none_lost_and_batched(server):
    """60 clients at once: every one gets its own complete answer, and the server answered them in shared batches."""
    pipe = server.app.state.pipeline
    before = httpx.get(server.url + "/healthz").json()["batching"]
    ecg = load_ecg(ECG_DCM)
    img = Image.open(io.BytesIO(png_bytes((64, 64))))
    questions = [f"Case {i}: which findings are present?" + " Please." * (i % 4) for i in range(60)]
    # What each request must get: the same prompt answered alone, in-process (greedy decoding is deterministic).
    expected = {}
    for i in range(60):
        q = pipe.prepare(questions[i], ecg=ecg) if i % 2 else pipe.prepare(questions[i], images=img)
        expected[i] = pipe.generate([q], 6)[0]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
            async def one(i):
                body = {"question": questions[i], "max_new_tokens": 6}
                if i % 2:
                    body["ecg"] = [{"npy": b64(npy_bytes(ecg))}]
                else:
                    body["images"] = [b64(png_bytes((64, 64)))]
                return await c.post("/v1/predict", json=body)
            return await asyncio.gather(*(one(i) for i in range(60)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 60
    bodies = [r.json() for r in responses]
    for i, b in enumerate(bodies):
        assert b["completion_tokens"] <= 6 and (len(b["images"]) == 1) == (i % 2 == 0)
    for i, pred in expected.items():
        assert bodies[i]["text"] == pred.text and bodies[i]["prompt_tokens"] == pred.prompt_tokens
    after = httpx.get(server.url + "/healthz").json()["batching"]
    assert after["requests"] - before["requests"] == 60
    assert after["batches"] - before["batches"] < 60 and after["largest_batch"] > 1


def test_model_failure_is_a_500_and_the_server_recovers(client, server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(server.app.state.pipeline.engine, "generate", broken)
    r = client.post("/v1/predict", json={"question": "q", "max_new_tokens": 2})
    assert r.status_code == 500 and error_of(r)["code"] == "internal_error" and "RuntimeError" in r.text
    monkeypatch.undo()
    assert client.post("/v1/predict", json={"question": "q", "max_new_tokens": 2}).status_code == 200


def test_serve_prompt_style_is_reported_and_used(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import qoqmed.serve.server as server_module
    from qoqmed.cli import app as cli
    from qoqmed.data.prompt_styles import RELEASED_FORMAT_SUFFIX, RELEASED_SYSTEM_PROMPT

    processor, model = build_tiny(seed=0)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    started = []
    monkeypatch.setattr(server_module, "run", lambda application, **kwargs: started.append(application))
    runner = CliRunner()
    res = runner.invoke(cli, ["serve", "--model", str(tmp_path / "m"), "--device", "cpu", "--max-new-tokens", "4",
                              "--prompt-style", "released"])
    assert res.exit_code == 0, res.output
    assert "released prompt style" in res.output
    (application,) = started
    pipe = application.state.pipeline
    assert pipe.prompt_style == "released" and pipe.system_prompt == RELEASED_SYSTEM_PROMPT
    prompts = []
    prepare = pipe.prepare

    def recording(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        prompts.append(prepared.prompt)
        return prepared

    monkeypatch.setattr(pipe, "prepare", recording)
    with ServerThread(application) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        assert c.get("/healthz").json()["prompt_style"] == "released"
        r = c.post("/v1/predict", json={"question": "Which findings?", "images": [b64(png_bytes())]})
        assert r.status_code == 200, r.text
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Rhythm?"}],
                                                 "max_tokens": 4})
        assert r.status_code == 200, r.text
    assert len(prompts) == 2
    assert all(f"<|im_start|>system\n{RELEASED_SYSTEM_PROMPT}<|im_end|>" in p for p in prompts)
    assert "Which findings?" + RELEASED_FORMAT_SUFFIX in prompts[0] and "Rhythm?" + RELEASED_FORMAT_SUFFIX in prompts[1]
    res = runner.invoke(cli, ["serve", "--model", str(tmp_path / "m"), "--prompt-style", "plain"])
    assert res.exit_code == 2 and "--prompt-style must be one of qoqmed, released, got 'plain'" in res.output
    assert len(started) == 1


def test_healthz_reports_the_default_prompt_style(client):
    assert client.get("/healthz").json()["prompt_style"] == "qoqmed"


def test_serve_engine_choice_is_checked(tmp_path):
    from typer.testing import CliRunner

    from qoqmed.cli import app as cli

    runner = CliRunner()
    res = runner.invoke(cli, ["serve", "--model", str(tmp_path), "--engine", "tensorrt"])
    assert res.exit_code == 2 and "--engine must be one of transformers, vllm, got 'tensorrt'" in res.output
    res = runner.invoke(cli, ["serve", "--model", str(tmp_path), "--engine", "vllm", "--device", "cuda"])
    assert res.exit_code == 2 and "--device applies to --engine transformers" in res.output
    res = runner.invoke(cli, ["serve", "--model", str(tmp_path), "--max-model-len", "512"])
    assert res.exit_code == 2 and "apply to --engine vllm" in res.output


@pytest.mark.vllm
def test_serve_engine_vllm_from_the_command_line(tiny_vllm, monkeypatch):
    """`qoqmed serve --engine vllm` builds the pipeline on a VLLMEngine with the command's options and serves it."""
    from typer.testing import CliRunner

    import qoqmed.infer.vllm_engine as vllm_engine
    import qoqmed.serve.server as server_module
    from qoqmed.cli import app as cli

    folder, engine = tiny_vllm
    made, started = [], []
    # The session's engine stands in for a second one over the same folder (each takes a minute to start).
    monkeypatch.setattr(vllm_engine, "VLLMEngine", lambda path, **options: made.append((path, options)) or engine)
    monkeypatch.setattr(server_module, "run", lambda application, **kwargs: started.append(application))
    res = CliRunner().invoke(cli, ["serve", "--model", str(folder), "--engine", "vllm", "--max-model-len", "1024",
                                   "--kv-cache-gib", "1", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert "vllm engine" in res.output
    assert made == [(folder, {"max_model_len": 1024, "kv_cache_gib": 1.0})]
    (application,) = started
    assert application.state.pipeline.engine is engine
    with ServerThread(application) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        r = c.post("/v1/predict", json={"question": "Which findings?", "images": [b64(png_bytes())]})
        assert r.status_code == 200 and r.json()["completion_tokens"] <= 4, r.text
