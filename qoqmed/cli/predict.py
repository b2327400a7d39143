"""`qoqmed predict`: answer one question about images, volumes, ECGs and notes, or every row of a jsonl file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, err, fail

PromptStyle = Annotated[str, typer.Option(help="Prompt: qoqmed, or released (the system prompt, format suffix and "
                                                "slice selection the released weights were trained with, so they "
                                                "answer in their own format).")]


def check_prompt_style(style: str) -> str:
    """``style`` when it is a prompt style; otherwise the command ends naming the option and the choices."""
    from ..data.prompt_styles import PROMPT_STYLES

    if style not in PROMPT_STYLES:
        fail(f"--prompt-style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    return style


def load_pipeline(model: Path, device: Optional[str], max_new_tokens: int, num_slices: int = 4,
                  prompt_style: str = "qoqmed", engine: str = "transformers", engine_options: dict | None = None):
    """The inference pipeline of the model folder ``model``, prompting in ``prompt_style`` and generating with
    ``engine``; a folder that cannot be loaded ends the command."""
    from transformers.utils import logging as hf_logging

    from ..infer import QoQMedPipeline
    from ..infer.pipeline import ENGINES

    check_prompt_style(prompt_style)
    if engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    hf_logging.disable_progress_bar()  # the spinner below says what is happening; no weight-loading bar
    try:
        with err.status(f"loading {model}"):
            return QoQMedPipeline.from_pretrained(model, device=device, max_new_tokens=max_new_tokens,
                                                  num_slices=num_slices, prompt_style=prompt_style, engine=engine,
                                                  engine_options=engine_options)
    except OSError as exc:  # FileNotFoundError and ValueError end the command as every input error does
        fail(str(exc))
    except ImportError as exc:
        fail(f"--engine {engine} cannot be imported ({exc}); install it with: pip install 'qoqmed[{engine}]'")


# ---- the steps of one question: parse the inputs, run the model, write the overlay and print ----

def _parse_decoding(temperature: float, top_p: float, seed: Optional[int]):
    from ..infer import Decoding, InputError

    try:
        return Decoding(temperature, top_p, seed)
    except InputError as exc:
        fail(f"--{exc.field.replace('_', '-')}: {exc.reason}")


def _parse_inputs(question: Optional[str], image: Optional[list[Path]], volume: Optional[list[Path]],
                  ecg: Optional[list[Path]], ecg_fs: Optional[float], ehr: Optional[str],
                  window: Optional[str]) -> dict:
    """The pipeline's keyword arguments for one question, from the command's options."""
    from ..data.windows import parse_window

    if question is None:
        fail("give a question, e.g. qoqmed predict --model DIR --image x.png \"Which findings are present?\"")
    if ehr and ehr.startswith("@"):
        try:
            ehr = Path(ehr[1:]).read_text()
        except OSError as exc:
            fail(f"--ehr {ehr}: {exc}")
    try:
        vol_window = parse_window(window)
    except ValueError:
        fail(f"--window {window!r}: use a preset name or CENTER,WIDTH")
    ecgs = [{"path": p, "fs": ecg_fs} if ecg_fs and p.suffix.lower() in (".csv", ".npy") else p for p in ecg or []]
    return {"images": image or None, "volumes": volume or None, "ecg": ecgs or None, "ehr": ehr,
            "window": vol_window}


def _show_prediction(pred, first_input: Optional[Path], overlay: Optional[Path], no_overlay: bool,
                     as_json: bool) -> None:
    """Write the overlay PNG (unless --no-overlay) and print the prediction, as JSON or for a reader."""
    from ..infer import save_overlay

    written = None
    if not no_overlay and pred.visuals:
        stem = first_input.name.split(".")[0]
        written = save_overlay(pred, overlay or Path(f"{stem}_boxes.png"))
    if as_json:
        body = pred.to_dict()
        body["overlay"] = str(written) if written else None
        print(json.dumps(body, indent=2))
    else:
        _print_prediction(pred, written)


def _print_prediction(pred, overlay: Optional[Path]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    # Model text goes in as Text, never as markup: answers are full of brackets.
    diagnosis = Text(pred.diagnosis, style="bold green") if pred.diagnosis else \
        Text("(no \\boxed{} diagnosis in the answer)", style="yellow")
    console.print(Panel(diagnosis, title="diagnosis", expand=False))
    if pred.labels:
        console.print("labels: " + ", ".join(pred.labels), markup=False)
    console.print(Panel(Text(pred.reasoning or "(no <think> section)"), title="reasoning", title_align="left"))
    if pred.boxes:
        table = Table(title="evidence boxes (original image pixels)")
        for col in ("label", "x1", "y1", "x2", "y2", "image"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for b in pred.boxes:
            source = pred.images[b["image"]]["source"] if b.get("image") is not None else "-"
            table.add_row(Text(b["label"]), *(f"{v:g}" for v in b["bbox_2d"]), source)
        console.print(table)
    t = pred.timing
    console.print(f"[dim]{pred.prompt_tokens} prompt + {pred.completion_tokens} answer tokens ({pred.finish_reason}); "
                  f"inputs {t['prepare_s']:.2f} s, generation {t['generate_s']:.2f} s[/]")
    if overlay is not None:
        console.print(f"overlay: {overlay}")

# ---- the steps of --batch: check the options, run every row, print the summary ----

def _check_batch_options(out: Optional[Path], question: Optional[str], *inputs) -> None:
    if out is None:
        fail("--batch needs --out (the folder for predictions.jsonl)")
    if question or any(inputs):
        fail("--batch takes its questions and inputs from the jsonl rows; drop the question and input options")


def _print_batch_summary(s, as_json: bool) -> None:
    summary = {"rows": s.rows, "skipped": s.skipped, "predicted": s.predicted, "failed": s.failed,
               "failed_before": s.failed_before, "output": str(s.output)}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    earlier = f" ({s.failed_before} of them failed then; --retry-failed redoes them)" if s.failed_before else ""
    reasons = "; failed rows hold their reason (\"ok\": false)" if not s.ok else ""
    console.print(f"{s.rows} rows: {s.predicted} predicted, {s.skipped} already done{earlier}, {s.failed} "
                  f"failed -> {s.output}{reasons}", markup=False, soft_wrap=True)


def predict(
    question: Annotated[Optional[str], typer.Argument(help="The question; inputs are placed before it, or where "
                                                           "<image>, <volume>, <ecg> placeholders say.")] = None,
    model: Annotated[Path, typer.Option(help="Model folder (save_pretrained) or LoRA adapter folder, e.g. "
                                             "quickstart_out/rl/model.")]
    = Path("quickstart_out/rl/model"),
    image: Annotated[Optional[list[Path]], typer.Option(
        "--image", help="Image file: PNG, JPEG, TIFF or DICOM. Repeat for several.")] = None,
    volume: Annotated[Optional[list[Path]], typer.Option(
        "--volume", help="NIfTI file, DICOM series folder or multi-frame DICOM; 4 slices are shown. Repeatable.")]
    = None,
    ecg: Annotated[Optional[list[Path]], typer.Option(
        "--ecg", help="ECG: WFDB .hea, DICOM waveform .dcm, .npy (8 x 2500, 250 Hz, mV), or with --ecg-fs a .csv "
                      "(header row naming the leads) or .npy at another rate. Repeatable.")] = None,
    ecg_fs: Annotated[Optional[float], typer.Option(
        help="Sampling rate in Hz of the .csv/.npy ECGs given with --ecg; they are resampled and lead-mapped "
             "(WFDB and DICOM carry their own rate).")] = None,
    ehr: Annotated[Optional[str], typer.Option(help="Clinical notes as text, or @FILE to read them from a file.")]
    = None,
    window: Annotated[Optional[str], typer.Option(help="CT window for volumes: a preset (lung, brain, bone, ...) "
                                                       "or CENTER,WIDTH.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the prediction as JSON.")] = False,
    overlay: Annotated[Optional[Path], typer.Option(
        help="Where to write the first image with the boxes drawn (default: <image name>_boxes.png here).")] = None,
    no_overlay: Annotated[bool, typer.Option("--no-overlay", help="Do not write an overlay PNG.")] = False,
    batch: Annotated[Optional[Path], typer.Option(
        help="jsonl of rows {id, question, images, volumes, ecg, ehr} (paths relative to the file) to predict.")]
    = None,
    out: Annotated[Optional[Path], typer.Option(help="With --batch: folder for predictions.jsonl and overlays/; "
                                                     "a rerun skips rows already there.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="With --batch: redo rows that failed in an earlier run.")]
    = False,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate() call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 answers greedily (the same inputs, the same answer); "
                                                    "above 0 samples, e.g. 0.7.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="With --temperature > 0: sample from the smallest set of tokens "
                                              "whose probability reaches this.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="With --temperature > 0: makes the sampled answer "
                                                     "reproducible.")] = None,
    prompt_style: PromptStyle = "qoqmed",
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
    = None,
) -> None:
    """Ask a model about images, volumes, ECGs and notes; print the diagnosis, reasoning and evidence boxes.

    One question:  qoqmed predict --model DIR --image chest.dcm --ecg rec.hea "Which findings are present?"

    Many rows:     qoqmed predict --model DIR --batch rows.jsonl --out preds/   (one output row per input row)

    Boxes are reported in pixels of the original image and drawn on it in the overlay PNG.
    """
    decoding = _parse_decoding(temperature, top_p, seed)
    check_prompt_style(prompt_style)
    if batch is not None:
        from ..infer.batch import run_batch

        _check_batch_options(out, question, image, volume, ecg, ecg_fs, ehr)
        pipe = load_pipeline(model, device, max_new_tokens, prompt_style=prompt_style)
        summary = run_batch(pipe, batch, out, batch_size=batch_size, overlays=not no_overlay,
                            retry_failed=retry_failed, show_progress=not as_json, decoding=decoding)
        _print_batch_summary(summary, as_json)
        if not summary.ok:
            raise typer.Exit(code=1)
        return
    inputs = _parse_inputs(question, image, volume, ecg, ecg_fs, ehr, window)
    pipe = load_pipeline(model, device, max_new_tokens, prompt_style=prompt_style)
    pred = pipe(question, **inputs, temperature=decoding.temperature, top_p=decoding.top_p, seed=decoding.seed)
    _show_prediction(pred, (image or volume or [None])[0], overlay, no_overlay, as_json)
