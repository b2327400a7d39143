"""`qoqmed data`: generate CLIMB-mini, validate and describe jsonl records, convert existing datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import AllowOutsidePaths, console, err, fail

data_app = typer.Typer(help="Create, check and describe datasets (jsonl records + files).", no_args_is_help=True)
convert_app = typer.Typer(
    help="Convert existing datasets to qoqmed jsonl records (one <split>.jsonl per split).", no_args_is_help=True)
data_app.add_typer(convert_app, name="convert")

# The row counts and seed of both generators.
NTrain = Annotated[int, typer.Option(help="Training records.")]
NVal = Annotated[int, typer.Option(help="Validation records.")]
NTest = Annotated[int, typer.Option(help="Test records.")]
Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")]


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Folder to write train/val/test.jsonl, files and datasheet.md.")],
    n_train: NTrain = 720, n_val: NVal = 90, n_test: NTest = 180, seed: Seed = 0,
    mix: Annotated[Optional[str], typer.Option(help="Train domain mix as domain=weight pairs, e.g. "
                                                    "'ct=0.6,ecg=0.2,mri=0.01' (unlisted domains get 0 plus the "
                                                    "minimum); default: the paper's skew (ct dominant, three "
                                                    "domains under 1%); 'balanced' for equal weights.")] = None,
    min_per_domain: Annotated[int, typer.Option(help="Rows every domain gets in every split.")] = 4,
    hard_fraction: Annotated[float, typer.Option(help="Share of subtle rows (fainter, smaller evidence, a "
                                                      "distractor).")] = 0.3,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing benchmark in OUT.")] = False,
) -> None:
    """Write the synthetic CLIMB-mini benchmark: 9 clinical domains, real label names, boxes and masks.

    Also writes datasheet.md (counts per split, domain and label; how the evidence is drawn) and stats.json.
    Splits are fixed by --seed."""
    from ..data.domains import DOMAINS
    from ..data.synthetic import generate_climb_mini

    weights = None
    if mix == "balanced":
        weights = {d: 1.0 for d in DOMAINS}
    elif mix:
        try:
            weights = {k.strip(): float(v) for k, v in (pair.split("=", 1) for pair in mix.split(","))}
        except ValueError:
            fail(f"--mix {mix!r}: expected domain=weight pairs separated by commas")
    with err.status("generating"):
        info = generate_climb_mini(out, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
                                   domain_weights=weights, min_per_domain=min_per_domain,
                                   hard_fraction=hard_fraction, overwrite=overwrite)
    console.print(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in _split_counts(info).items())})")


@data_app.command("generate-fusion")
def data_generate_fusion(
    out: Annotated[Path, typer.Argument(help="Folder to write train/val/test.jsonl and the files.")],
    n_train: NTrain = 96, n_val: NVal = 16, n_test: NTest = 32, seed: Seed = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing fusion task in OUT.")] = False,
) -> None:
    """Write CLIMB-mini's fusion task: ECG + chest X-ray + note, answer 'Yes' when 2 of 3 findings show.

    A model that ignores one modality scores about 75% at best; compare input sets with `qoqmed eval --inputs
    table4`."""
    from ..data.climb_mini import generate_fusion

    counts = generate_fusion(out, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, overwrite=overwrite)
    console.print(f"wrote {out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")


def _split_counts(info: dict) -> dict:
    counts = info.get("counts", info) if isinstance(info, dict) else {}
    return {k: (sum(v.values()) if isinstance(v, dict) else v) for k, v in counts.items()
            if k in ("train", "val", "test")}


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="A jsonl file of records.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result and every problem as JSON.")] = False,
    read_files: Annotated[bool, typer.Option(
        help="Read every referenced file (images incl. DICOM, volumes, ECGs, masks); --no-read-files only checks "
             "that they exist.")] = True,
    allow_outside_paths: AllowOutsidePaths = False,
) -> None:
    """Check every row and every file it references; print one line per problem; exit 1 if any.

    Each problem line reads FILE.jsonl:LINE: FIELD: REFERENCED-FILE: REASON.
    Files are read with the readers training uses (DICOM decoding, volume slices and windows,
    ECG lead mapping and resampling, mask size), so a file that passes here loads in training.
    """
    from rich.progress import track

    from ..data.errors import DataError, printable
    from ..data.validate import validate_records

    def progress(items):
        items = list(items)
        if as_json or len(items) < 50:
            return items
        return track(items, description="reading files", console=err, transient=True)

    try:
        result = validate_records(path, read_files=read_files, progress=progress,
                                  allow_outside=allow_outside_paths)
    except DataError as exc:  # the jsonl file itself is missing or unreadable
        result = None
        problems = [str(exc)]
    if result is not None:
        problems = [str(p) for p in result.problems]
    if as_json:
        payload = result.to_dict() if result is not None else {"path": printable(str(path)), "ok": False,
                                                               "problems": [{"reason": p} for p in problems]}
        payload["path"] = printable(payload["path"])
        print(json.dumps(payload, indent=2))
    elif problems:
        for line in problems:
            console.print(printable(line), markup=False, soft_wrap=True)
        console.print(f"{len(problems)} problem(s)" + (f" in {result.rows} rows ({result.valid_rows} clean)"
                                                      if result is not None else ""), markup=False)
    else:
        console.print(printable(f"{path}: {result.rows} records, {result.files_checked} files read, no problems"),
                      markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(code=1)


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="A jsonl file of records.")],
    plot: Annotated[Optional[Path], typer.Option(help="Write a bar chart of rows per domain to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    allow_outside_paths: AllowOutsidePaths = False,
) -> None:
    """Rows per domain, dataset and label, and how imbalanced the domains are."""
    from rich.table import Table

    from ..data.errors import DataError
    from ..data.schema import load_records
    from ..data.stats import plot_domain_counts, record_stats

    try:
        records = load_records(path, check_files=False, allow_outside=allow_outside_paths)
    except DataError as exc:
        fail(f"{exc}\n(run `qoqmed data validate {path}` for every problem)")
    stats = record_stats(records)
    if plot is not None:
        plot_domain_counts(stats, plot, title=path.name)
    if as_json:
        console.print_json(json.dumps(stats))
        return
    table = Table(title=f"{path} ({stats['n']} rows)")
    for col in ("domain", "rows", "share"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, v in stats["domains"].items():
        table.add_row(d, str(v["rows"]), f"{v['share']:.1%}")
    console.print(table)
    labels = Table(title="labels per dataset")
    labels.add_column("dataset")
    labels.add_column("label counts")
    labels.add_column("max/min", justify="right")
    for ds, v in stats["datasets"].items():
        labels.add_row(ds, ", ".join(f"{k}: {c}" for k, c in v["labels"].items()),
                       f"{v['label_imbalance']:.1f}x" if v["label_imbalance"] else "-")
    console.print(labels)
    console.print(f"largest/smallest domain: {stats['imbalance_ratio']:.1f}x ({stats['largest_domain']} / "
                  f"{stats['smallest_domain']}); rows with images {stats['with_images']}, with volumes "
                  f"{stats['with_volumes']}, with ECG {stats['with_ecg']}, with boxes {stats['with_boxes']}, with notes "
                  f"{stats['with_notes']}, text only {stats['text_only']}")
    if stats["user_domains"]:
        console.print(f"user domains (not among the built-in nine): {', '.join(stats['user_domains'])}")


def _convert_progress(description: str):
    from rich.progress import track

    return lambda items: track(list(items), description=description, console=err, transient=True)


def _finish_conversion(conversion, out: Path, prefix: str = "") -> None:
    from ..data.converters import write_splits

    for line in conversion.skipped:
        err.print(f"skipped: {line}", markup=False, soft_wrap=True)
    written = write_splits(conversion, out, prefix=prefix)
    from ..data.schema import leaves_folder

    counts = ", ".join(f"{split}: {len(conversion.splits[split])}" for split in written)
    outside = any(leaves_folder(os.path.relpath(record.resolve(rel), out))
                  for records in conversion.splits.values() for record in records for _, rel in record.files())
    flag = " --allow-outside-paths" if outside else ""
    console.print(f"wrote {', '.join(str(p) for p in written.values())} ({counts}; {len(conversion.skipped)} "
                  f"skipped). Check the files with `qoqmed data validate{flag}`.", markup=False, soft_wrap=True)
    if outside:
        console.print(f"The rows point at the source files outside {out} (../ paths): commands that read them need "
                      "--allow-outside-paths (a recipe: data.allow_outside_paths: true).", markup=False,
                      soft_wrap=True)


@convert_app.command("climb")
def convert_climb_cmd(
    annotations: Annotated[list[Path], typer.Argument(help="CLIMB annotation files (.jsonl or a .json array).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    image_root: Annotated[Optional[Path], typer.Option(
        help="Folder the rows' image/video paths are relative to (default: each annotation file's folder).")] = None,
    domain: Annotated[Optional[str], typer.Option(
        help="Domain for every row (default: the row's, else from the first path component).")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset key for every row (default: the row's, else <domain>/<dataset> from the path).")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split for every row (default: the row's, else the file name's, else a seeded split).")] = None,
    val: Annotated[float, typer.Option(help="Fraction of unsplit rows for val.")] = 0.0,
    test: Annotated[float, typer.Option(help="Fraction of unsplit rows for test.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the split of unsplit rows.")] = 0,
) -> None:
    """CLIMB's LLaVA-style rows (images/videos, conversations, label) or reference rows -> qoqmed records."""
    from ..data.converters import convert_climb

    conversion = convert_climb(annotations, image_root=image_root, domain=domain, dataset=dataset, split=split,
                               seed=seed, val=val, test=test, progress=_convert_progress("converting"))
    _finish_conversion(conversion, out)


@convert_app.command("ptbxl")
def convert_ptbxl_cmd(
    table: Annotated[Path, typer.Argument(help="Label table CSV (PTB-XL: ptbxl_database.csv).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    records_root: Annotated[Optional[Path], typer.Option(
        help="Folder the record paths are relative to (default: the table's folder).")] = None,
    statements: Annotated[Optional[Path], typer.Option(
        help="PTB-XL scp_statements.csv, to map diagnostic codes to superclasses.")] = None,
    path_column: Annotated[str, typer.Option(help="Column with the WFDB record path (no suffix).")] = "filename_hr",
    label_column: Annotated[str, typer.Option(help="Column with the code dict, e.g. {'NORM': 100.0}.")] = "scp_codes",
    fold_column: Annotated[str, typer.Option(help="Fold column; '' for a seeded split instead.")] = "strat_fold",
    id_column: Annotated[str, typer.Option(help="Record id column; '' to number rows.")] = "ecg_id",
    val_folds: Annotated[str, typer.Option(help="Comma-separated folds for val.")] = "9",
    test_folds: Annotated[str, typer.Option(help="Comma-separated folds for test.")] = "10",
    min_likelihood: Annotated[float, typer.Option(help="Ignore codes with a lower likelihood.")] = 0.0,
    other: Annotated[bool, typer.Option(help="Label records diagnosed only with superclasses outside the mapped "
                                             "ones (per --statements) 'Other', as CLIMB does; --no-other skips "
                                             "them.")] = True,
    dataset: Annotated[str, typer.Option(help="Dataset key of the records.")] = "ptbxl",
    seed: Annotated[int, typer.Option(help="Seed of the split when there is no fold column.")] = 0,
) -> None:
    """PTB-XL-style WFDB records + CSV label table -> ECG records (labels: CLIMB's ECG superclass names)."""
    from ..data.converters import convert_ptbxl

    folds = [[int(f) for f in text.split(",") if f.strip()] for text in (val_folds, test_folds)]
    conversion = convert_ptbxl(
        table, records_root=records_root, statements=statements, path_column=path_column,
        label_column=label_column, fold_column=fold_column or None, id_column=id_column or None,
        val_folds=folds[0], test_folds=folds[1], min_likelihood=min_likelihood, other=other, dataset=dataset,
        seed=seed,
        progress=_convert_progress("converting"))
    _finish_conversion(conversion, out)


@convert_app.command("folder")
def convert_folder_cmd(
    root: Annotated[Path, typer.Argument(help="ROOT/<split>/<class>/<file> or ROOT/<class>/<file>.")],
    domain: Annotated[str, typer.Option(help="Domain of every record (e.g. dermoscopy, ct).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    dataset: Annotated[Optional[str], typer.Option(help="Dataset key (default: <domain>/<ROOT name>).")] = None,
    val: Annotated[float, typer.Option(help="Fraction per class for val (class/file layout).")] = 0.1,
    test: Annotated[float, typer.Option(help="Fraction per class for test (class/file layout).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split (class/file layout).")] = 0,
    num_slices: Annotated[int, typer.Option(help="Slices sampled from each volume or video.")] = 4,
    window: Annotated[Optional[str], typer.Option(help="Window preset for volumes (lung, brain, bone, ...).")] = None,
) -> None:
    """One folder per class -> records whose answer is the folder name; volumes and videos become `volumes`, DICOM
    ECG waveforms (with --domain ecg) `ecg`."""
    from ..data.converters import convert_folder

    conversion = convert_folder(root, domain=domain, dataset=dataset, seed=seed, val=val, test=test,
                                num_slices=num_slices, window=window, progress=_convert_progress("converting"))
    _finish_conversion(conversion, out)


@convert_app.command("mimic-iv")
def convert_mimic_cmd(
    mimic_iv: Annotated[Path, typer.Option(help="MIMIC-IV folder (hosp/, icu/).")],
    ecg: Annotated[Path, typer.Option(help="MIMIC-IV-ECG folder (record_list.csv, files/).")],
    cxr: Annotated[Path, typer.Option(help="MIMIC-CXR-JPG folder (mimic-cxr-2.0.0-metadata.csv.gz, files/).")],
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.jsonl.")],
    notes: Annotated[Optional[Path], typer.Option(
        help="MIMIC-IV-Note folder (note/radiology.csv.gz); discharge notes are never read.")] = None,
    window_hours: Annotated[float, typer.Option(help="Hours after admission whose ECG, X-ray, labs and notes "
                                                     "the model sees; the prediction time. Below 48.")] = 24.0,
    lookback_hours: Annotated[float, typer.Option(help="Also take inputs this many hours before admission "
                                                       "(e.g. the emergency department).")] = 0.0,
    tasks: Annotated[str, typer.Option(help="Comma-separated: los_7d, mortality_48h.")] = "los_7d,mortality_48h",
    skip_missing: Annotated[bool, typer.Option(help="Skip admissions whose ECG or X-ray file is missing (listed) "
                                                    "instead of stopping.")] = False,
    val: Annotated[float, typer.Option(help="Fraction of patients for val.")] = 0.1,
    test: Annotated[float, typer.Option(help="Fraction of patients for test.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the patient split.")] = 0,
) -> None:
    """MIMIC-IV + MIMIC-IV-ECG + MIMIC-CXR-JPG (+ notes) -> length of stay > 7 days and 48-hour mortality rows.

    The label rules are in the README section "Multimodal fusion (MIMIC-IV, Table 4)"."""
    from ..data.mimic import convert_mimic_iv

    conversion = convert_mimic_iv(mimic_iv, ecg, cxr, notes_root=notes, window_hours=window_hours,
                                  lookback_hours=lookback_hours, tasks=[t.strip() for t in tasks.split(",")],
                                  skip_missing=skip_missing, seed=seed, val=val, test=test,
                                  progress=_convert_progress("converting"))
    _finish_conversion(conversion, out)
