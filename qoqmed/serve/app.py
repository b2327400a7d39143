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

Request bodies are in ``schemas.py``, error shaping in ``errors.py``, chat flattening in ``chat.py``; this module
holds the routes and the body-size middleware.
"""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..data.ecg import ECG_SAMPLING_RATE, ENCODER_LEADS
from ..data.files import has_dicom_magic
from ..data.windows import parse_window
from ..infer.inputs import InputError
from ..infer.pipeline import GREEDY, Decoding, Prediction, QoQMedPipeline
from .batcher import Batcher, QueueFull
from .chat import flatten_chat
from .errors import APIError, error_response, install_error_handlers, logger
from .payloads import Staged, decode_b64, scrub
from .schemas import (MAX_EHR_CHARS, MAX_FILES, MAX_QUESTION_CHARS, ChatRequest, ECGPart, FilePart, PredictRequest,
                      SamplingOptions, VolumePart)

STATIC = Path(str(resources.files("qoqmed") / "serve" / "static"))


class BodyLimit:
    """ASGI middleware: the request body is read here in full before the app sees it, with 413 for a body over
    ``limit`` bytes (by Content-Length, or while a chunked body streams in) and 408 when the body has not arrived
    ``timeout_s`` seconds after the request head (a stalled or trickling client). Both in the API's error shape."""

    def __init__(self, app, limit: int, timeout_s: float = 60.0):
        self.app, self.limit, self.timeout_s = app, int(limit), float(timeout_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = error_response(413, f"request body is larger than the {self.limit} byte limit "
                                      "(start the server with a larger --max-body-mb)", code="body_too_large",
                                 headers={"Connection": "close"})
        # The HTTP layer holds the client to its Content-Length, so the declared size is the size.
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_big(scope, receive, send)
        # Frameworks turn errors raised while they read a body into a generic 400, so the body is read here, up to
        # the limit and the deadline, and handed on only when it is complete.
        chunks, seen = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                late = error_response(408, f"the request body did not arrive within {self.timeout_s:g} s",
                                      code="request_timeout", headers={"Connection": "close"})
                return await late(scope, receive, send)
            if message["type"] != "http.request":
                return  # the client went away
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await too_big(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, chunks = b"".join(chunks), None
        replayed = False

        async def replay():
            nonlocal replayed, body
            if not replayed:
                replayed = True
                message, body = {"type": "http.request", "body": body, "more_body": False}, b""
                return message
            return await receive()

        await self.app(scope, replay, send)


# ------------------------------------------------------------------------------------------------- app
def create_app(pipe: QoQMedPipeline, *, max_body_bytes: int = 32 << 20, max_batch: int = 8,
               batch_wait_ms: float = 5.0, max_new_tokens_limit: int = 1024, max_queue: int = 1024,
               body_timeout_s: float = 60.0) -> FastAPI:
    """The ASGI app serving ``pipe``. Run it with :func:`qoqmed.serve.server.run` (``qoqmed serve`` does), which
    adds the connection timeouts."""
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
    app.state.service = Service(pipe, batcher, max_new_tokens_limit, max_body_bytes)
    app.add_middleware(BodyLimit, limit=max_body_bytes, timeout_s=body_timeout_s)
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@dataclass
class Service:
    """What every route shares: the pipeline, the batcher and this server's limits."""

    pipe: QoQMedPipeline
    batcher: Batcher
    max_new_tokens_limit: int
    max_body_bytes: int

    def max_new(self, requested: int | None) -> int:
        n = requested or self.pipe.max_new_tokens
        if n > self.max_new_tokens_limit:
            raise APIError(400, f"max tokens {n} exceeds this server's limit of {self.max_new_tokens_limit}",
                           "max_tokens", code="too_many_tokens")
        return n

    async def predict(self, question: str, fill, ehr: str | None, window: str | None, max_new: int,
                      system: str | None = None, decoding: Decoding = GREEDY, n: int = 1,
                      history: list[tuple[str, str]] | None = None) -> list[Prediction]:
        """Stage the inputs in a private temp folder, read them (threadpool), then queue for batched generation;
        ``n`` sampled answers to the same prompt (seeds ``seed``, ``seed + 1``, ... when seeded)."""
        with tempfile.TemporaryDirectory(prefix="qoqmed-req-") as tmp:
            staged = Staged(Path(tmp))
            try:
                await run_in_threadpool(fill, staged)
                prepared = await run_in_threadpool(self.pipe.prepare, question, staged.images, staged.volumes,
                                                   staged.ecg, ehr, None, _window(window), system, history)
            except InputError as exc:
                raise APIError(400, scrub(str(exc), Path(tmp)), exc.field) from exc
        draws = [decoding if decoding.seed is None else replace(decoding, seed=decoding.seed + i) for i in range(n)]
        try:
            return list(await asyncio.gather(*(self.batcher.submit(prepared, max_new, d) for d in draws)))
        except QueueFull as exc:
            raise APIError(503, f"server busy: {exc}", code="overloaded") from exc
        except Exception as exc:  # noqa: BLE001
            # Answered here rather than by a catch-all handler, which would also drop the keep-alive connection.
            logger.exception("generation failed")
            raise APIError(500, f"generation failed ({type(exc).__name__}); see the server log",
                           code="internal_error") from exc


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]
router = APIRouter()


@router.get("/healthz")
async def healthz(service: ServiceDep):
    batcher = service.batcher
    return {"status": "ok", "model": service.pipe.name, "queue": batcher.pending, "batching": batcher.stats.as_dict(),
            "max_batch": batcher.max_batch, "max_body_bytes": service.max_body_bytes,
            "prompt_style": service.pipe.prompt_style}


@router.post("/v1/predict")
async def predict(req: PredictRequest, service: ServiceDep):
    """Structured prediction: labels, boxes (original pixels), reasoning, raw text, timing."""
    max_new = service.max_new(req.max_new_tokens)

    def fill(staged: Staged):
        for i, item in enumerate(req.images):
            part = item if isinstance(item, FilePart) else FilePart(data=item)
            raw, mime = decode_b64(part.data, f"images[{i}]" + (".data" if isinstance(item, FilePart) else ""))
            staged.add_image(raw, part.filename, mime)
        for i, vol in enumerate(req.volumes):
            _add_volume(staged, vol, f"volumes[{i}]")
        for i, ecg in enumerate(req.ecg):
            _add_ecg(staged, ecg, f"ecg[{i}]")

    pred = (await service.predict(req.question, fill, req.ehr, req.window, max_new, decoding=_decoding(req)))[0]
    return _prediction_body(pred, req.return_previews)


@router.post("/v1/predict/form")
async def predict_form(
    service: ServiceDep,
    question: Annotated[str, Form(max_length=MAX_QUESTION_CHARS)] = "",
    ehr: Annotated[str | None, Form(max_length=MAX_EHR_CHARS)] = None,
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
    max_new = service.max_new(max_new_tokens)
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

    pred = (await service.predict(question, fill, ehr or None, window or None, max_new))[0]
    return _prediction_body(pred, return_previews)


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, service: ServiceDep):
    """OpenAI-compatible chat completion: a conversation of user and assistant turns, inputs in any user turn.
    Greedy unless ``temperature > 0``; ``n`` samples up to 8 answers. The parsed answer is under ``qoqmed`` (per
    choice, and the first at the top level)."""
    if req.stream:
        raise APIError(400, "streaming is not supported; send stream=false", "stream", code="unsupported")
    decoding = _decoding(req)
    if req.n > 1 and decoding.greedy:
        raise APIError(400, "n > 1 needs temperature > 0: greedy answers to one prompt are all the same", "n")
    max_new = service.max_new(req.max_completion_tokens or req.max_tokens)
    chat = flatten_chat(req.messages)

    def fill(staged: Staged):
        for url, where in chat.images:
            raw, mime = decode_b64(url, where)
            staged.add_image(raw, None, mime)
        for vol, where in chat.volumes:
            _add_volume(staged, vol, where)
        for ecg, where in chat.ecgs:
            _add_ecg(staged, ecg, where)

    # A client's system prompt replaces the default for this request only.
    preds = await service.predict(chat.question, fill, None, None, max_new, system=chat.system, decoding=decoding,
                                  n=req.n, history=chat.history)
    return _completion_body(preds, req.model or service.pipe.name)


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html")


def _completion_body(preds: list[Prediction], model: str) -> dict:
    completion = sum(p.completion_tokens for p in preds)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": p.text},
                     "finish_reason": p.finish_reason, "logprobs": None, "qoqmed": p.to_dict()}
                    for i, p in enumerate(preds)],
        "usage": {"prompt_tokens": preds[0].prompt_tokens, "completion_tokens": completion,
                  "total_tokens": preds[0].prompt_tokens + completion},
        "qoqmed": preds[0].to_dict(),  # the first choice's parsed answer
    }


def _decoding(req: SamplingOptions) -> Decoding:
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
        else:  # read by the file route's reader, with the same checks (dtype, header size, rate)
            staged.add_ecg_npy(raw, ecg.fs, ecg.leads, f"{where}.npy")


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
            "ecg": [{"leads": list(ENCODER_LEADS), "fs": ECG_SAMPLING_RATE,
                     "signal": [[round(float(x), 3) for x in lead] for lead in e]} for e in pred.ecgs],
        }
    return body
