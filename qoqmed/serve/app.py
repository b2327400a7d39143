"""HTTP API and web page for a QoQ-Med model (FastAPI).

Endpoints:

- ``POST /v1/chat/completions``: OpenAI-compatible; content parts ``text``, ``image_url`` (a base64 ``data:`` URL;
  DICOM as ``data:application/dicom;base64,...``), ``ecg`` and ``volume`` (see ``ECGPart``/``VolumePart``).
- ``POST /v1/predict``: JSON in, the ``Prediction`` fields out (labels, boxes in original pixels, reasoning, ...).
- ``POST /v1/predict/form``: the same from a multipart form (the web page, ``curl -F``).
- ``GET /healthz``: liveness, model name, queue and batching counters.
- ``GET /``: the web page.

Requests never name server-side files: every input travels in the request body. Bodies over ``max_body_bytes``
get 413; malformed JSON 400; wrong types 422 naming the field; unreadable inputs 400 naming the input and why.
Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
from starlette.concurrency import run_in_threadpool

from ..data.ecg import ECG_SAMPLING_RATE, ENCODER_LEADS
from ..data.files import has_dicom_magic
from ..data.windows import parse_window
from ..infer.inputs import InputError
from ..infer.pipeline import GREEDY, Decoding, Prediction, QoQMedPipeline
from .batcher import Batcher, QueueFull
from .payloads import Staged, decode_b64, scrub

logger = logging.getLogger("qoqmed.serve")
STATIC = Path(str(resources.files("qoqmed") / "serve" / "static"))
MAX_FILES = 32


# ------------------------------------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FilePart(_Strict):
    """A file as base64 (or a ``data:`` URL); ``filename`` only hints at the format."""

    data: StrictStr
    filename: StrictStr | None = None


class ECGPart(_Strict):
    """One ECG, in exactly one of these forms:

    - ``npy``: base64 ``.npy`` of shape (8, 2500): leads I, II, V1..V6, 10 s at 250 Hz, in mV (with ``fs``: any
      (leads, samples) array at that rate, lead names from ``leads``, default I, II, V1..V6);
    - ``hea`` + ``dat``: a WFDB record, both base64;
    - ``dicom``: a base64 DICOM 12-lead waveform;
    - ``signal`` + ``fs`` (+ ``leads``): numbers in mV, (leads, samples);
    - ``csv`` + ``fs`` (+ ``leads``): a base64 CSV file, a header row naming the leads, then one row per sample, mV.
    """

    npy: StrictStr | None = None
    csv: StrictStr | None = None
    hea: StrictStr | None = None
    dat: StrictStr | None = None
    dicom: StrictStr | None = None
    signal: list[list[float]] | None = None
    fs: StrictFloat | StrictInt | None = Field(None, gt=0)
    leads: list[StrictStr] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        forms = [name for name, on in (("npy", self.npy is not None), ("hea+dat", self.hea is not None
                 or self.dat is not None), ("dicom", self.dicom is not None), ("signal", self.signal is not None),
                 ("csv", self.csv is not None)) if on]
        if len(forms) != 1:
            raise ValueError(f"give exactly one of npy, hea+dat, dicom, signal or csv (got {forms or 'none'})")
        if forms == ["hea+dat"] and (self.hea is None or self.dat is None):
            raise ValueError("a WFDB record needs both hea and dat")
        if (self.signal is not None or self.csv is not None) and self.fs is None:
            raise ValueError(f"{forms[0]} needs fs (sampling rate in Hz)")
        return self


class VolumePart(_Strict):
    """A volume: one NIfTI (.nii/.nii.gz) or multi-frame DICOM file, or ``series``: single-slice DICOM files."""

    data: StrictStr | None = None
    filename: StrictStr | None = None
    series: list[StrictStr] | None = Field(None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.data is None) == (self.series is None):
            raise ValueError("give either data (one file) or series (DICOM slices)")
        return self


class _Sampling(BaseModel):
    """Decoding: greedy unless ``temperature > 0`` (then nucleus sampling with ``top_p``; ``seed`` reproduces)."""

    temperature: StrictFloat | StrictInt | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(None, gt=0, le=1)
    seed: StrictInt | None = Field(None, ge=0, lt=2**63 - 8)  # room for the seeds of n choices

    def decoding(self) -> Decoding:
        return Decoding(float(self.temperature or 0.0), float(1.0 if self.top_p is None else self.top_p), self.seed)


class PredictRequest(_Strict, _Sampling):
    question: StrictStr = Field(max_length=20_000)
    images: list[FilePart | StrictStr] = Field(default_factory=list, max_length=MAX_FILES)
    volumes: list[VolumePart] = Field(default_factory=list, max_length=8)
    ecg: list[ECGPart] = Field(default_factory=list, max_length=8)
    ehr: StrictStr | None = Field(None, max_length=50_000)
    window: StrictStr | None = None
    max_new_tokens: StrictInt | None = Field(None, ge=1)
    return_previews: StrictBool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_Strict):
    url: StrictStr
    detail: StrictStr | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class ECGContent(_Strict):
    type: Literal["ecg"]
    ecg: ECGPart


class VolumeContent(_Strict):
    type: Literal["volume"]
    volume: VolumePart


ContentPart = Annotated[Union[TextPart, ImagePart, ECGContent, VolumeContent], Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr | list[ContentPart]


class ChatRequest(_Sampling):
    # OpenAI clients send many optional parameters; unknown ones are accepted and ignored. Unlike OpenAI's default
    # temperature of 1, an absent temperature means greedy decoding, as in evaluation.
    model_config = ConfigDict(extra="allow", strict=True)
    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    stream: StrictBool = False
    n: StrictInt = Field(1, ge=1, le=8)


# ------------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_input"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str = "invalid_input",
           kind: str = "invalid_request_error", **extra) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code, **extra}},
                        status_code=status)


_MEMBER = re.compile(r"^(str|int|float|bool|[A-Z]\w*|.*\[.*|function-.*|constrained-.*|json-or-python.*)$")


def _loc(loc: tuple) -> str:
    """('body', 'images', 0, 'FilePart', 'data') -> 'images[0].data': the names pydantic adds for union members
    (and the tag it adds after a tagged-union index) are dropped, so the path reads like the request JSON."""
    out, skip_tag, after_union = "", False, False
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            skip_tag, after_union = after_union, False
            continue
        if skip_tag:
            skip_tag = False
            continue
        if _MEMBER.match(str(part)):
            after_union = after_union or "tagged-union" in str(part)
            continue
        out += f".{part}" if out else str(part)
    return out or "body"


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, by Content-Length or while streaming a chunked body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = _error(413, f"request body is larger than the {self.limit} byte limit "
                              "(start the server with a larger --max-body-mb)", code="body_too_large")
        if declared is not None:
            # The HTTP layer holds the client to its Content-Length, so the declared size is the size.
            if not declared.isdigit() or int(declared) > self.limit:
                return await too_big(scope, receive, send)
            return await self.app(scope, receive, send)
        # A chunked body of unknown size is read here, up to the limit, and handed on only if it fits (frameworks
        # turn errors raised while they read a body into a generic 400).
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await too_big(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ------------------------------------------------------------------------------------------------- app
def create_app(pipe: QoQMedPipeline, *, max_body_bytes: int = 32 << 20, max_batch: int = 8,
               batch_wait_ms: float = 5.0, max_new_tokens_limit: int = 1024, max_queue: int = 1024) -> FastAPI:
    """The ASGI app serving ``pipe``. Run it with uvicorn (``qoqmed serve`` does)."""
    batcher = Batcher(pipe, max_batch=max_batch, wait_ms=batch_wait_ms, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="qoqmed", version="0.1.0", lifespan=lifespan,
                  description="QoQ-Med: ECG, images, volumes and notes in; reasoning, evidence boxes and a "
                              "diagnosis out.")
    app.state.batcher = batcher
    app.state.pipeline = pipe
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # With unions, pydantic reports one error per member; the deepest one is the one that explains the problem.
        errors = sorted(exc.errors(), key=lambda e: -len(e.get("loc", ())))
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}", "body",
                          code="malformed_json")
        details = [{"param": _loc(tuple(e["loc"])), "message": e["msg"]} for e in errors[:20]]
        param = details[0]["param"]
        return _error(422, f"{param}: {first['msg']}", param, code=first.get("type", "invalid"), details=details)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.param, code=exc.code,
                      kind="server_error" if exc.status >= 500 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        # The traceback goes to the server log; the client learns only that the fault is on this side.
        logger.exception("request failed: %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", code="internal_error",
                      kind="server_error")

    def _max_new(requested: int | None) -> int:
        n = requested or pipe.max_new_tokens
        if n > max_new_tokens_limit:
            raise APIError(400, f"max tokens {n} exceeds this server's limit of {max_new_tokens_limit}",
                           "max_tokens", code="too_many_tokens")
        return n

    async def _predict(question: str, fill, ehr: str | None, window: str | None, max_new: int,
                       system: str | None = None, decoding: Decoding = GREEDY, n: int = 1,
                       history: list[tuple[str, str]] | None = None) -> list[Prediction]:
        """Stage the inputs in a private temp folder, read them (threadpool), then queue for batched generation;
        ``n`` sampled answers to the same prompt (seeds ``seed``, ``seed + 1``, ... when seeded)."""
        with tempfile.TemporaryDirectory(prefix="qoqmed-req-") as tmp:
            staged = Staged(Path(tmp))
            try:
                await run_in_threadpool(fill, staged)
                prepared = await run_in_threadpool(pipe.prepare, question, staged.images, staged.volumes,
                                                   staged.ecg, ehr, None, _window(window), system, history)
            except InputError as exc:
                raise APIError(400, scrub(str(exc), Path(tmp)), exc.field) from exc
        draws = [decoding if decoding.seed is None else replace(decoding, seed=decoding.seed + i) for i in range(n)]
        try:
            return list(await asyncio.gather(*(batcher.submit(prepared, max_new, d) for d in draws)))
        except QueueFull as exc:
            raise APIError(503, f"server busy: {exc}", code="overloaded") from exc
        except Exception as exc:  # noqa: BLE001
            # Answered here rather than by a catch-all handler, which would also drop the keep-alive connection.
            logger.exception("generation failed")
            raise APIError(500, f"generation failed ({type(exc).__name__}); see the server log",
                           code="internal_error") from exc

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": pipe.name, "queue": batcher.pending, "batching": batcher.stats.as_dict(),
                "max_batch": batcher.max_batch, "max_body_bytes": max_body_bytes}

    @app.post("/v1/predict")
    async def predict(req: PredictRequest):
        """Structured prediction: labels, boxes (original pixels), reasoning, raw text, timing."""
        max_new = _max_new(req.max_new_tokens)

        def fill(staged: Staged):
            for i, item in enumerate(req.images):
                part = item if isinstance(item, FilePart) else FilePart(data=item)
                raw, mime = decode_b64(part.data, f"images[{i}]" + (".data" if isinstance(item, FilePart) else ""))
                staged.add_image(raw, part.filename, mime)
            for i, vol in enumerate(req.volumes):
                _add_volume(staged, vol, f"volumes[{i}]")
            for i, ecg in enumerate(req.ecg):
                _add_ecg(staged, ecg, f"ecg[{i}]")

        pred = (await _predict(req.question, fill, req.ehr, req.window, max_new, decoding=_decoding(req)))[0]
        return _prediction_body(pred, req.return_previews)

    @app.post("/v1/predict/form")
    async def predict_form(
        question: Annotated[str, Form(max_length=20_000)] = "",
        ehr: Annotated[str | None, Form(max_length=50_000)] = None,
        window: Annotated[str | None, Form()] = None,
        max_new_tokens: Annotated[int | None, Form(ge=1)] = None,
        return_previews: Annotated[bool, Form()] = False,
        images: Annotated[list[UploadFile], File()] = [],  # noqa: B006 - FastAPI copies defaults
        volumes: Annotated[list[UploadFile], File()] = [],  # noqa: B006
        ecg: Annotated[list[UploadFile], File()] = [],  # noqa: B006
        ecg_fs: Annotated[float | None, Form(gt=0)] = None,
    ):
        """The same as /v1/predict from a multipart form: files under ``images``, ``volumes`` (one NIfTI/DICOM file
        each, or several DICOM slices that form one series) and ``ecg`` (.npy, DICOM, a WFDB .hea + .dat, or a .csv
        with a header row naming the leads, whose rate ``ecg_fs`` gives)."""
        max_new = _max_new(max_new_tokens)
        if len(images) + len(volumes) + len(ecg) > 4 * MAX_FILES:
            raise APIError(400, f"too many files (limit {4 * MAX_FILES})", "files")
        blobs = {name: [(f.filename, await f.read()) for f in files if f.filename or f.size]
                 for name, files in (("images", images), ("volumes", volumes), ("ecg", ecg))}

        def fill(staged: Staged):
            for i, (name, raw) in enumerate(blobs["images"]):
                if not raw:
                    raise InputError(f"images[{i}]", f"{name}: file is empty (0 bytes)")
                staged.add_image(raw, name)
            vols = blobs["volumes"]
            if len(vols) > 1 and all(has_dicom_magic(raw) for _, raw in vols):
                staged.add_series([raw for _, raw in vols], "volumes")
            else:
                for i, (name, raw) in enumerate(vols):
                    staged.add_volume(raw, name, f"volumes[{i}]")
            _add_ecg_files(staged, blobs["ecg"], ecg_fs)

        pred = (await _predict(question, fill, ehr or None, window or None, max_new))[0]
        return _prediction_body(pred, return_previews)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        """OpenAI-compatible chat completion: a conversation of user and assistant turns, inputs in any user turn.
        Greedy unless ``temperature > 0``; ``n`` samples up to 8 answers. The parsed answer is under ``qoqmed`` (per choice, and the first at the top level)."""
        if req.stream:
            raise APIError(400, "streaming is not supported; send stream=false", "stream", code="unsupported")
        decoding = _decoding(req)
        if req.n > 1 and decoding.greedy:
            raise APIError(400, "n > 1 needs temperature > 0: greedy answers to one prompt are all the same", "n")
        max_new = _max_new(req.max_completion_tokens or req.max_tokens)
        system = [m for m in req.messages if m.role in ("system", "developer")]
        turns = [(i, m) for i, m in enumerate(req.messages) if m.role in ("user", "assistant")]
        roles = [m.role for _, m in turns]
        if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
            raise APIError(400, "messages must alternate user and assistant turns, from a user turn to a user turn",
                           "messages")
        texts: list[str] = []  # user and assistant turns in order, inputs marked by placeholders
        images, volumes, ecgs = [], [], []
        for i, msg in turns:
            parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) else msg.content
            text = []
            for k, part in enumerate(parts):
                where = f"messages[{i}].content[{k}]"
                if isinstance(part, TextPart):
                    text.append(part.text)
                elif msg.role == "assistant":
                    raise APIError(400, "an assistant turn may hold text only", where)
                elif isinstance(part, ImagePart):
                    text.append("<image>")
                    images.append((part.image_url.url, f"{where}.image_url.url"))
                elif isinstance(part, ECGContent):
                    text.append("<ecg>")
                    ecgs.append((part.ecg, f"{where}.ecg"))
                else:
                    text.append("<volume>")
                    volumes.append((part.volume, f"{where}.volume"))
            texts.append("".join(text))
        question, history = texts[-1], list(zip(texts[:-1:2], texts[1:-1:2]))

        def fill(staged: Staged):
            for url, where in images:
                raw, mime = decode_b64(url, where)
                staged.add_image(raw, None, mime)
            for vol, where in volumes:
                _add_volume(staged, vol, where)
            for ecg, where in ecgs:
                _add_ecg(staged, ecg, where)

        sys_text = "\n".join(m.content if isinstance(m.content, str) else
                             " ".join(p.text for p in m.content if isinstance(p, TextPart)) for m in system)
        # A client's system prompt replaces the default for this request only.
        preds = await _predict(question, fill, None, None, max_new, system=sys_text or None, decoding=decoding,
                               n=req.n, history=history)
        completion = sum(p.completion_tokens for p in preds)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model or pipe.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": p.text},
                         "finish_reason": p.finish_reason, "logprobs": None, "qoqmed": p.to_dict()}
                        for i, p in enumerate(preds)],
            "usage": {"prompt_tokens": preds[0].prompt_tokens, "completion_tokens": completion,
                      "total_tokens": preds[0].prompt_tokens + completion},
            "qoqmed": preds[0].to_dict(),  # the first choice's parsed answer
        }

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _decoding(req: _Sampling) -> Decoding:
    try:
        return req.decoding()
    except InputError as exc:
        raise APIError(400, exc.reason, exc.field) from exc


def _window(window: str | None) -> Any:
    """'lung' or '40,400' (center,width) -> what load_volume takes; 400 naming the field when malformed."""
    try:
        return parse_window(window)
    except ValueError as exc:
        raise APIError(400, str(exc), "window") from exc


def _add_volume(staged: Staged, vol: VolumePart, where: str) -> None:
    if vol.series is not None:
        staged.add_series([decode_b64(s, f"{where}.series[{k}]")[0] for k, s in enumerate(vol.series)],
                          f"{where}.series")
    else:
        raw, _ = decode_b64(vol.data, f"{where}.data")
        staged.add_volume(raw, vol.filename, f"{where}.data")


def _add_ecg(staged: Staged, ecg: ECGPart, where: str) -> None:
    if ecg.signal is not None:
        staged.ecg.append({"signal": ecg.signal, "fs": ecg.fs, "leads": ecg.leads})
    elif ecg.hea is not None:
        hea = decode_b64(ecg.hea, f"{where}.hea")[0]
        staged.add_wfdb(hea, decode_b64(ecg.dat, f"{where}.dat")[0], where)
    elif ecg.dicom is not None:
        staged.add_ecg_file(decode_b64(ecg.dicom, f"{where}.dicom")[0], None, f"{where}.dicom")
    elif ecg.csv is not None:
        staged.add_ecg_csv(decode_b64(ecg.csv, f"{where}.csv")[0], ecg.fs, ecg.leads, f"{where}.csv")
    else:
        raw = decode_b64(ecg.npy, f"{where}.npy")[0]
        if ecg.fs is None:
            staged.add_ecg_file(raw, None, f"{where}.npy")
        else:
            import numpy as np

            try:
                arr = np.load(io.BytesIO(raw), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise InputError(f"{where}.npy", f"not a readable .npy array: {exc}") from exc
            staged.ecg.append({"signal": arr, "fs": ecg.fs, "leads": ecg.leads})


def _add_ecg_files(staged: Staged, files: list[tuple[str | None, bytes]], fs: float | None = None) -> None:
    """Uploaded ECG files: WFDB .hea/.dat pairs are matched by stem; .csv files are read at ``fs`` Hz; the rest are
    .npy or DICOM waveforms."""
    by_stem: dict[str, dict[str, bytes]] = {}
    for i, (name, raw) in enumerate(files):
        lower = (name or "").lower()
        if lower.endswith((".hea", ".dat")):
            by_stem.setdefault(Path(lower).stem, {})[lower[-3:]] = raw
        elif lower.endswith(".csv"):
            if fs is None:
                raise InputError("ecg_fs", f"{name}: a CSV ECG needs its sampling rate: send the form field ecg_fs")
            staged.add_ecg_csv(raw, fs, None, f"ecg[{i}]")
        else:
            staged.add_ecg_file(raw, name, f"ecg[{i}]")
    for stem, pair in by_stem.items():
        if set(pair) != {"hea", "dat"}:
            missing = ({"hea", "dat"} - set(pair)).pop()
            raise InputError("ecg", f"WFDB record {stem!r} needs its .{missing} file too")
        staged.add_wfdb(pair["hea"], pair["dat"], f"ecg[{stem}]")


def _png_data_url(image, max_side: int = 768) -> str:
    img = image.copy()
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _prediction_body(pred: Prediction, previews: bool) -> dict:
    body = pred.to_dict()
    if previews:
        body["previews"] = {
            "images": [_png_data_url(v.image) for v in pred.visuals],
            "ecg": [{"leads": list(ENCODER_LEADS), "fs": ECG_SAMPLING_RATE, "signal": [[round(float(x), 3) for x in lead]
                                                                         for lead in e]} for e in pred.ecgs],
        }
    return body
