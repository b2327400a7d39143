"""``QoQMedPipeline``: ask a saved QoQ-Med model about images, volumes, ECGs and notes in one call.

    pipe = QoQMedPipeline.from_pretrained("quickstart_out/rl/model")
    pred = pipe("Which findings are present?", images="chest.dcm", ecg="rec.hea")
    pred.labels, pred.boxes, pred.reasoning

Boxes come back in pixels of the ORIGINAL image (the model writes them in pixels of the image as it saw it, after
the processor's resize; docs/design.md §2.3). They refer to the first image of the prompt, ``image: 0``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.boxes import from_model_box
from ..data.limits import request_budget
from ..data.prompt_styles import check_style, slice_selection, user_text
from ..data.prompt_styles import system_prompt as style_system_prompt
from ..data.prompts import STYLE_SYSTEM
from ..data.schema import ECG_TOKEN, IMAGE_TOKEN, PLACEHOLDER_ORDER, VOLUME_TOKEN, append_notes, place_inputs
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor, chat_messages
from ..modeling.lora import is_adapter_folder, load_model_and_processor
from ..rewards.parsing import parse_response
from .inputs import (InputError, VisualInput, as_list, load_ecg_input, load_image_input, load_volume_input,
                     reading)


@dataclass
class Query:
    """One question and its inputs. Each input field takes one item or a list (see ``QoQMedPipeline.__call__``)."""

    question: str
    images: Any = None
    volumes: Any = None
    ecg: Any = None
    ehr: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Decoding:
    """How an answer is drawn. Greedy by default (``temperature=0``): the same inputs give the same answer, as in
    evaluation. ``temperature > 0`` samples, with nucleus ``top_p``; ``seed`` makes a sampled answer reproducible."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (np.isfinite(self.temperature) and 0.0 <= self.temperature <= 10.0):
            raise InputError("temperature", f"must be a number in [0, 10] (0 = greedy), got {self.temperature}")
        if not (np.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InputError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InputError("seed", f"must be an integer in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False}
        # top_k=0 turns off the generation config's top-k, so top_p alone bounds the candidates (as clients expect)
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": 0}


GREEDY = Decoding()
ENGINES = ("transformers", "vllm")


@dataclass
class PreparedQuery:
    """A query with every file read and the prompt built; ready to be batched into one generate call."""

    prompt: str                  # chat-formatted text fed to the processor
    problem: str                 # the user turn with <image>/<ecg> placeholders
    visuals: list[VisualInput]
    ecgs: list[np.ndarray]
    prompt_tokens: int
    prepare_s: float
    id: str | None = None


@dataclass
class Prediction:
    """What the model answered, parsed.

    ``boxes``: ``[{"bbox_2d": [x1, y1, x2, y2], "label": str, "image": 0, "model_bbox_2d": [...]}]`` with
    ``bbox_2d`` in original pixels of ``images[image]`` (clipped to it) and ``model_bbox_2d`` as the model wrote it.
    """

    text: str
    reasoning: str | None
    diagnosis: str | None
    labels: list[str]
    boxes: list[dict]
    images: list[dict]
    format_ok: bool
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timing: dict
    id: str | None = None
    visuals: list[VisualInput] = field(default_factory=list, repr=False)
    ecgs: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready fields (the decoded images and ECG arrays are left out)."""
        out = asdict(self)
        out.pop("visuals")
        out.pop("ecgs")
        return out


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TransformersEngine:
    """Generation with a transformers QoQ-Med model: one ``generate`` call per batch of prepared queries."""

    def __init__(self, model: QoQMedForConditionalGeneration, processor: QoQMedProcessor,
                 tokenizer_lock: threading.Lock):
        self.model = model.eval()
        self.processor = processor
        self.max_positions = int(getattr(model.config.text_config, "max_position_embeddings", 0) or 0)
        self.limits: dict[str, int] = {}  # inputs per prompt: none beyond the prompt length
        self._lock = threading.Lock()  # one generate at a time; torch already uses every core for one call
        self._tok_lock = tokenizer_lock
        self._eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    @torch.no_grad()
    def generate(self, prepared: Sequence[PreparedQuery], max_new: int, decoding: Decoding) -> list[list[int]]:
        """The new token ids of every query, up to and including the end-of-turn token where it stopped."""
        p = self.processor
        images = [v.image for q in prepared for v in q.visuals]
        ecgs = [e for q in prepared for e in q.ecgs]
        with self._lock:
            # Left padding: generation appends to the right end of every row.
            with self._tok_lock:
                enc = p(text=[q.prompt for q in prepared], images=images or None, ecg=ecgs or None, padding=True,
                        padding_side="left", return_tensors="pt")
            enc = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
            if decoding.seed is not None:
                torch.manual_seed(decoding.seed)  # under the lock: no other call draws from the generator meanwhile
            out = self.model.generate(**enc, max_new_tokens=max_new, **decoding.generate_kwargs(),
                                      suppress_tokens=self.model.placeholder_token_ids())
        # A row that stopped is padded after its end-of-turn token; one that did not ran the whole length.
        rows = out[:, enc["input_ids"].shape[1]:].tolist()
        return [row[:row.index(self._eos) + 1] if self._eos in row else row for row in rows]


class QoQMedPipeline:
    """Prompt building, input loading, batched greedy generation and answer parsing around a QoQ-Med model.

    ``model`` is a transformers model, or an engine with the ``generate``, ``max_positions`` and ``limits`` of
    :class:`TransformersEngine` (``qoqmed.infer.vllm_engine.VLLMEngine``)."""

    def __init__(self, model, processor: QoQMedProcessor, *,
                 system_prompt: str | None = STYLE_SYSTEM, max_new_tokens: int = 128, num_slices: int = 4,
                 batch_size: int = 8, name: str = "qoqmed", prompt_style: str = "qoqmed"):
        # The fast tokenizer's padding settings are mutable Rust state: a batch encode in generate() and a token
        # count in prepare() on another thread (the server does both at once) must not overlap.
        self._tok_lock = threading.Lock()
        if isinstance(model, QoQMedForConditionalGeneration):
            self.engine = TransformersEngine(model, processor, self._tok_lock)
            self.model = self.engine.model
        else:
            self.engine, self.model = model, None
        self.processor = processor
        # qoqmed or released (the released weights' prompt, slice selection and answer layout): see
        # qoqmed.data.prompt_styles; the system prompt defaults to the style's.
        self.prompt_style = check_style(prompt_style)
        self.system_prompt = style_system_prompt(prompt_style) if system_prompt is STYLE_SYSTEM else system_prompt
        self.max_new_tokens = int(max_new_tokens)
        self.num_slices = int(num_slices)
        self.batch_size = int(batch_size)
        self.name = name
        tok = processor.tokenizer
        self._eos = tok.convert_tokens_to_ids("<|im_end|>")
        # Control tokens of the chat format and the input placeholders: text holding one would end a turn early or
        # claim an image or ECG that is not there (and fail the whole generate batch it shares).
        self._reserved = tuple(sorted({t for t in tok.all_special_tokens if len(t) > 1}, key=len, reverse=True))
        self.max_positions = self.engine.max_positions

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, dtype: torch.dtype | None = None,
                        engine: str = "transformers", engine_options: dict | None = None, **kwargs
                        ) -> QoQMedPipeline:
        """Load a folder written by ``save_pretrained`` (e.g. ``quickstart_out/rl/model``), or a LoRA adapter
        folder, whose adapter is merged into its base model (``base_model_name_or_path``).

        ``engine="vllm"`` generates through vLLM (the ``vllm`` extra) on the device vLLM was built for, from a full
        model folder; ``engine_options`` go to :class:`qoqmed.infer.vllm_engine.VLLMEngine` (limits, ...)."""
        path = Path(path)
        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r}; choose one of {ENGINES}")
        if engine == "vllm":
            if device is not None:
                raise ValueError("device applies to the transformers engine; vLLM runs where it was built for")
            if is_adapter_folder(path):
                raise ValueError(f"{path}: a LoRA adapter folder; vLLM loads full model folders: merge it first "
                                 "(qoqmed model merge-lora)")
            from .vllm_engine import VLLMEngine

            options = dict(engine_options or {})
            if dtype is not None:
                options["dtype"] = dtype
            model, processor = VLLMEngine(path, **options), QoQMedProcessor.from_pretrained(path)
        else:
            model, processor = load_model_and_processor(path, dtype)
            model.to(_device(device))
        kwargs.setdefault("name", path.name if path.name not in ("model", "") else f"{path.parent.name}/{path.name}")
        return cls(model, processor, **kwargs)

    # ------------------------------------------------------------------------------------------------ inputs
    def prepare(self, question: str, images: Any = None, volumes: Any = None, ecg: Any = None,
                ehr: str | None = None, id: str | None = None, window: Any = None, system: str | None = None,
                history: Sequence[tuple[str, str]] | None = None) -> PreparedQuery:
        """Read every input and build the prompt. Raises ``InputError`` naming the bad input.

        ``system`` replaces the pipeline's system prompt for this query. ``history``: earlier turns of a
        conversation as (user text, assistant answer) pairs; inputs shown in those turns are marked in their text
        with ``<image>``/``<volume>``/``<ecg>`` and take the first images/volumes/ECGs, in order."""
        t0 = time.perf_counter()
        if not isinstance(question, str):
            raise InputError("question", f"must be a string, got {type(question).__name__}")
        if ehr is not None and not isinstance(ehr, str):
            raise InputError("ehr", f"must be a string (clinical notes), got {type(ehr).__name__}")
        history = self._check_history(history)
        for name, text in [("question", question), ("ehr", ehr), ("system", system)] + [
                (f"history[{i}]", t) for i, turn in enumerate(history) for t in turn]:
            self._check_text(name, text)
        image_items, volume_items, ecg_items = as_list(images), as_list(volumes), as_list(ecg)
        if not question.strip() and not (image_items or volume_items or ecg_items or ehr):
            raise InputError("question", "empty question and no inputs")
        p = self.processor
        loaded_images, loaded_volumes, ecgs = [], [], []
        with request_budget():  # the decoded sizes of all of this query's inputs add up against one limit
            for i, x in enumerate(image_items):
                with reading(f"images[{i}]"):
                    loaded_images.append(load_image_input(x, f"images[{i}]"))
            for i, x in enumerate(volume_items):
                with reading(f"volumes[{i}]"):
                    loaded_volumes.append(load_volume_input(x, f"volumes[{i}]", self.num_slices, window,
                                                             slice_selection(self.prompt_style)))
            for i, x in enumerate(ecg_items):
                with reading(f"ecg[{i}]"):
                    ecgs.append(load_ecg_input(x, f"ecg[{i}]", p.ecg_num_leads, p.ecg_num_samples))

        earlier = {tag: sum(u.count(tag) for u, _ in history) for tag in PLACEHOLDER_ORDER}
        for tag, n, what in (("<image>", len(loaded_images), "images"), ("<volume>", len(loaded_volumes), "volumes"),
                             ("<ecg>", len(ecgs), "ecg")):
            if earlier[tag] > n:
                raise InputError("history", f"earlier turns show {earlier[tag]} {tag} but {n} {what} given")
        problem = self._problem(question, len(loaded_images) - earlier["<image>"],
                                len(loaded_volumes) - earlier["<volume>"], len(ecgs) - earlier["<ecg>"], ehr)
        # One pass over all user turns, so images and volume slices are numbered in conversation order.
        visuals, users = self._order_visuals([u for u, _ in history] + [problem], loaded_images, loaded_volumes)
        for kind, n, field in (("image", len(visuals), "images"), ("ecg", len(ecgs), "ecg")):
            limit = self.engine.limits.get(kind)
            if limit is not None and n > limit:
                raise InputError(field, f"the prompt holds {n} {kind} inputs (each volume slice is one image); this "
                                        f"engine takes at most {limit}")
        users[-1] = user_text(users[-1], self.prompt_style)
        problem = users[-1]
        system = system or self.system_prompt
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        images_left = [v.image for v in visuals]
        for k, text in enumerate(users):
            n = text.count("<image>")
            messages += chat_messages(text, images_left[:n])  # the user turn with its own images
            images_left = images_left[n:]
            if k < len(history):
                messages.append({"role": "assistant", "content": [{"type": "text", "text": history[k][1]}]})
        prompt = p.apply_chat_template(messages, add_generation_prompt=True)
        n_tokens = self._count_tokens(prompt, visuals, len(ecgs))
        if self.max_positions and n_tokens + self.max_new_tokens > self.max_positions:
            raise InputError("question", f"the prompt is {n_tokens} tokens; with {self.max_new_tokens} new tokens it "
                                         f"exceeds the model's {self.max_positions} positions (fewer/smaller inputs)")
        return PreparedQuery(prompt=prompt, problem=problem, visuals=visuals, ecgs=ecgs, prompt_tokens=n_tokens,
                             prepare_s=time.perf_counter() - t0, id=id)

    def _check_text(self, field: str, text: str | None) -> None:
        """InputError when ``text`` holds one of the model's reserved tokens (chat-format and placeholder tokens)."""
        if text is None:
            return
        if not isinstance(text, str):
            raise InputError(field, f"must be a string, got {type(text).__name__}")
        found = next((t for t in self._reserved if t in text), None)
        if found is not None:
            raise InputError(field, f"contains the model's reserved token {found!r}; write inputs as <image>, "
                                    "<volume>, <ecg> placeholders")

    @staticmethod
    def _check_history(history: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
        out = []
        for i, turn in enumerate(history or []):
            if not (isinstance(turn, (tuple, list)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise InputError(f"history[{i}]", "must be a (user text, assistant answer) pair of strings")
            out.append((turn[0], turn[1]))
        return out

    @staticmethod
    def _problem(question: str, n_images: int, n_volumes: int, n_ecgs: int, ehr: str | None) -> str:
        # Placeholders the caller wrote are honoured in place and must be counted right; the rest go where
        # training rows put them (place_inputs decides for both).
        body, mismatches = place_inputs(question, {IMAGE_TOKEN: n_images, VOLUME_TOKEN: n_volumes, ECG_TOKEN: n_ecgs})
        for tag, found, expected in mismatches:
            what = {IMAGE_TOKEN: "images", VOLUME_TOKEN: "volumes", ECG_TOKEN: "ecg"}[tag]
            raise InputError("question", f"has {found} {tag} placeholder(s) but {expected} {what} given")
        return append_notes(body, ehr)

    @staticmethod
    def _order_visuals(turns: Sequence[str], images: list[Image.Image], volumes: list[list[Image.Image]]
                       ) -> tuple[list[VisualInput], list[str]]:
        """Visual inputs in prompt order over the user turns, and each turn's text with every <volume> turned into
        one <image> per slice. The turns stay separate strings, so no character of a turn can split or merge them."""
        out: list[VisualInput] = []
        texts: list[str] = []
        i_img = i_vol = 0
        for turn in turns:
            text, pos = [], 0
            while True:
                hits = [(turn.find(t, pos), t) for t in ("<image>", "<volume>")]
                hits = [(i, t) for i, t in hits if i >= 0]
                if not hits:
                    text.append(turn[pos:])
                    break
                at, tag = min(hits)
                text.append(turn[pos:at])
                if tag == "<image>":
                    out.append(VisualInput(images[i_img], f"images[{i_img}]"))
                    text.append("<image>")
                    i_img += 1
                else:
                    slices = volumes[i_vol]
                    out.extend(VisualInput(s, f"volumes[{i_vol}] slice {k + 1}/{len(slices)}")
                               for k, s in enumerate(slices))
                    text.append("<image>" * len(slices))
                    i_vol += 1
                pos = at + len(tag)
            texts.append("".join(text))
        return out, texts

    def _count_tokens(self, prompt: str, visuals: Sequence[VisualInput], n_ecgs: int) -> int:
        p = self.processor
        ip = p.image_processor
        unit = ip.patch_size * ip.merge_size
        with self._tok_lock:
            n = len(p.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        for v in visuals:
            w, h = p.model_image_size(*v.image.size)
            n += (w // unit) * (h // unit) - 1
        return n + n_ecgs * (p.num_ecg_tokens - 1)

    # ------------------------------------------------------------------------------------------------ generation
    def generate(self, prepared: Sequence[PreparedQuery], max_new_tokens: int | None = None,
                 decoding: Decoding | None = None) -> list[Prediction]:
        """Answers for prepared queries, in one engine call (callers chunk to a batch size); greedy unless
        ``decoding`` samples."""
        if not prepared:
            return []
        max_new = int(max_new_tokens or self.max_new_tokens)
        t0 = time.perf_counter()
        rows = self.engine.generate(prepared, max_new, decoding or GREEDY)
        gen_s = time.perf_counter() - t0
        with self._tok_lock:
            texts = self.processor.batch_decode(rows, skip_special_tokens=True)
        return [self._prediction(q, text, "stop" if self._eos in ids else "length", len(ids), gen_s, len(prepared))
                for q, ids, text in zip(prepared, rows, texts)]

    def _prediction(self, q: PreparedQuery, text: str, finish: str, n_new: int, gen_s: float, batch: int
                    ) -> Prediction:
        parsed = parse_response(text)
        images = []
        for v in q.visuals:
            w, h = v.image.size
            mw, mh = self.processor.model_image_size(w, h)
            images.append({"source": v.source, "width": w, "height": h, "model_width": mw, "model_height": mh})
        boxes = []
        for b in parsed.boxes:
            entry = {"label": b.label, "model_bbox_2d": [round(c, 1) for c in b.bbox]}
            if images:
                first = images[0]
                x1, y1, x2, y2 = from_model_box(b.bbox, (first["width"], first["height"]), self.processor)
                # Models sometimes write corners in either order or past the border; report a clean box.
                xs = sorted(min(max(x, 0.0), first["width"]) for x in (x1, x2))
                ys = sorted(min(max(y, 0.0), first["height"]) for y in (y1, y2))
                entry.update(bbox_2d=[round(xs[0], 1), round(ys[0], 1), round(xs[1], 1), round(ys[1], 1)], image=0)
            else:
                entry.update(bbox_2d=entry["model_bbox_2d"], image=None)
            boxes.append(entry)
        return Prediction(
            text=text, reasoning=parsed.think, diagnosis=parsed.boxed, labels=parsed.labels, boxes=boxes,
            images=images, format_ok=parsed.json_valid and parsed.boxed is not None, finish_reason=finish,
            prompt_tokens=q.prompt_tokens, completion_tokens=n_new,
            timing={"prepare_s": round(q.prepare_s, 4), "generate_s": round(gen_s, 4), "batch_size": batch,
                    "total_s": round(q.prepare_s + gen_s, 4)},
            id=q.id, visuals=q.visuals, ecgs=q.ecgs,
        )

    # ------------------------------------------------------------------------------------------------ front doors
    def __call__(self, question: str | Sequence[Query | dict], images: Any = None, volumes: Any = None,
                 ecg: Any = None, ehr: str | None = None, max_new_tokens: int | None = None, window: Any = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 history: Sequence[tuple[str, str]] | None = None) -> Prediction | list[Prediction | InputError]:
        """Answer one question (or, given a list of ``Query``/dicts, many: see :meth:`predict_batch`).

        ``images``: path(s) (PNG, JPEG, TIFF, DICOM) or PIL images / numpy arrays. ``volumes``: NIfTI or DICOM
        path(s), (slices, H, W) arrays or lists of slices; ``num_slices`` uniformly spaced slices are shown.
        ``ecg``: path(s) (.npy, WFDB .hea/.dat, DICOM waveform), (8, 2500) arrays (I, II, V1..V6, 250 Hz, mV),
        ``{"signal", "fs", "leads"}`` dicts, or ``{"path", "fs", "leads"}`` for a .csv/.npy at another rate.
        ``ehr``: clinical notes as text. ``window``: CT window for volumes. ``temperature``/``top_p``/``seed``:
        see :class:`Decoding` (greedy by default). ``history``: earlier (question, answer) turns, see :meth:`prepare`.
        """
        decoding = Decoding(temperature, top_p, seed)
        if isinstance(question, (list, tuple)):
            return self.predict_batch(question, max_new_tokens=max_new_tokens, decoding=decoding)
        prepared = self.prepare(question, images, volumes, ecg, ehr, window=window, history=history)
        return self.generate([prepared], max_new_tokens, decoding)[0]

    def predict_batch(self, queries: Iterable[Query | dict], batch_size: int | None = None,
                      max_new_tokens: int | None = None, show_progress: bool = False,
                      decoding: Decoding | None = None) -> list[Prediction | InputError]:
        """Answer many queries, ``batch_size`` per generate call. A query whose inputs fail gives its
        ``InputError`` in its slot; the others still run."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        queries = [q if isinstance(q, Query) else Query(**q) for q in queries]
        size = int(batch_size or self.batch_size)
        results: list[Prediction | InputError] = [None] * len(queries)  # type: ignore[list-item]
        with Progress(TextColumn("[bold]predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not show_progress) as bar:
            task = bar.add_task("predict", total=len(queries))
            for start in range(0, len(queries), size):
                ready, slots = [], []
                for i in range(start, min(start + size, len(queries))):
                    q = queries[i]
                    try:
                        ready.append(self.prepare(q.question, q.images, q.volumes, q.ecg, q.ehr, id=q.id))
                        slots.append(i)
                    except InputError as exc:
                        results[i] = exc
                for i, pred in zip(slots, self.generate(ready, max_new_tokens, decoding)):
                    results[i] = pred
                bar.advance(task, min(size, len(queries) - start))
        return results
