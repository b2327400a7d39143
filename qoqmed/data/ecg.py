"""ECG readers: WFDB, DICOM 12-lead waveforms, ``.npy`` and ``.csv`` -> a fixed lead set, rate and length in mV.

The ECG encoder (ECG-JEPA) was pretrained on 8 leads (I, II, V1..V6) x 10 s at 250 Hz, which is the default
``ECGSpec``. ``ECGSpec.reference_compat()`` reproduces the reference loader's 500 Hz x 5 s window; it is offered
only for comparison with that implementation, because it does not match the encoder's pretraining.

Every problem (missing or unreadable file, missing lead, unknown units, non-finite values, a too-short record)
raises ``DataError`` naming the file and the reason; a short record is padded only when asked for, never silently.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import firwin, resample_poly

from .dicom import read_dicom
from .errors import DataError, reading_errors
from .files import check_file
from .limits import (BYTES_PER_SAMPLE, MAX_SAMPLING_RATE, MIN_SAMPLING_RATE, charge_decoded, check_npy_header,
                     check_size)

__all__ = [
    "ECGSpec", "ECGSignal", "read_ecg", "canonical_lead", "STANDARD_LEADS", "ENCODER_LEADS",
    "ECG_SAMPLING_RATE", "ECG_SECONDS", "ECG_SAMPLES", "MIN_SAMPLING_RATE", "MAX_SAMPLING_RATE", "check_sampling_rate",
]

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# The one definition of the model's ECG layout, the one ECG-JEPA was pretrained on: 8 leads x 10 s at 250 Hz.
# Readers, the simulator, inference inputs and the server all produce it.
ENCODER_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
ECG_SAMPLING_RATE = 250
ECG_SECONDS = 10.0
ECG_SAMPLES = int(ECG_SAMPLING_RATE * ECG_SECONDS)
MIN_SECONDS = 1.0
# Largest up or down factor of the resampling ratio: the anti-aliasing filter has 20 taps per unit of it (at most
# 20,001 taps, 160 kB), and every common rate (128, 257, 360, 500, 512, 1000 Hz...) still converts exactly.
MAX_RESAMPLE_FACTOR = 1000

_CANON = {name.lower(): name for name in STANDARD_LEADS}
# Scale factor to millivolts, keyed by lower-cased UCUM code or DICOM code meaning / WFDB unit string.
_TO_MV = {
    "nv": 1e-6, "nanovolt": 1e-6, "nanovolts": 1e-6,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
}
# Einthoven's law (II = I + III): how to rebuild a missing I or II from the other two limb leads.
_DERIVATIONS = {
    "II": ("I + III", (("I", 1.0), ("III", 1.0))),
    "I": ("II - III", (("II", 1.0), ("III", -1.0))),
}


@dataclass(frozen=True)
class ECGSpec:
    """Target layout of a decoded ECG: sampling rate (Hz), window length (s), lead order and optional z-score."""

    sampling_rate: int = ECG_SAMPLING_RATE
    seconds: float = ECG_SECONDS
    leads: tuple[str, ...] = ENCODER_LEADS
    normalize: bool = False

    def __post_init__(self) -> None:
        if not (self.sampling_rate > 0 and self.seconds > 0):
            raise ValueError(
                f"ECGSpec needs a positive rate and length, got {self.sampling_rate} Hz x {self.seconds} s"
            )
        leads = tuple(canonical_lead(name) or name for name in self.leads)
        unknown = [name for name in leads if name not in STANDARD_LEADS]
        if unknown or not leads or len(set(leads)) != len(leads):
            raise ValueError(f"ECGSpec leads must be distinct standard leads, got {self.leads!r}")
        object.__setattr__(self, "leads", leads)

    @property
    def samples(self) -> int:
        return int(round(self.sampling_rate * self.seconds))

    @classmethod
    def reference_compat(cls, normalize: bool = False) -> "ECGSpec":
        """500 Hz x 5 s (2500 samples): the window the reference QoQ-Med loader cut; not the encoder's pretraining."""
        return cls(sampling_rate=500, seconds=5.0, normalize=normalize)


@dataclass
class ECGSignal:
    """A decoded ECG: ``data`` is float32 ``(n_leads, samples)`` in millivolts (z-scored per lead if ``normalized``)."""

    data: np.ndarray
    sampling_rate: int
    leads: tuple[str, ...]
    source: str
    original_rate: float
    original_seconds: float
    units: str = "mV"
    format: str = ""
    derived: dict[str, str] = field(default_factory=dict)  # lead -> formula, e.g. {"II": "I + III"}
    padded_samples: int = 0
    normalized: bool = False


@functools.lru_cache(maxsize=4096)
def canonical_lead(label: str) -> str | None:
    """Map a lead label such as "Lead II", "ii", "MDC_ECG_LEAD_V1" or "Lead I (Einthoven)" to its standard name."""
    text = re.sub(r"\(.*?\)", " ", str(label)).lower()
    text = re.sub(r"^\s*(mdc_ecg_lead_|ecg[\s_-]*lead|lead)", "", text.strip())
    text = re.sub(r"[^0-9a-z]", "", text)
    return _CANON.get(text)


def read_ecg(
    path: str | Path,
    spec: ECGSpec | None = None,
    *,
    fs: float | None = None,
    lead_names: Sequence[str] | None = None,
    pad: bool = False,
) -> ECGSignal:
    """Read an ECG file and return it in ``spec``'s lead order, rate and length, in millivolts.

    Formats, by suffix: ``.hea``/``.dat`` or a record name without suffix -> WFDB; ``.dcm`` -> DICOM waveform
    (the longest multiplex group holding the needed leads); ``.npy`` -> ``(leads, samples)`` array in mV, ``fs``
    required, ``lead_names`` default I, II, V1..V6; ``.csv`` -> one column per lead named in a header row, in mV,
    ``fs`` required. ``lead_names`` relabels the channels of any format.

    The first ``spec.samples`` samples after resampling are kept. A shorter record raises ``DataError`` unless
    ``pad=True``, which repeats the last value of each lead and records the count in ``padded_samples``.
    """
    spec = spec or ECGSpec()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        fmt, (signal, labels, rate) = "dicom", _read_dicom(check_file(path, "ECG"), spec)
    elif suffix == ".npy":
        fmt, (signal, labels, rate) = "npy", _read_npy(check_file(path, "ECG"), fs, lead_names)
    elif suffix == ".csv":
        fmt, (signal, labels, rate) = "csv", _read_csv(check_file(path, "ECG"), fs)
    elif suffix in (".hea", ".dat") or path.with_name(path.name + ".hea").exists():
        fmt, (signal, labels, rate) = "wfdb", _read_wfdb(path)
    elif not path.exists():
        raise DataError(f"{path}: ECG file not found")
    else:
        raise DataError(
            f"{path}: unsupported ECG file type {path.suffix!r}; expected .hea/.dat (WFDB), .dcm, .npy or .csv"
        )

    if lead_names is not None and fmt != "npy":
        labels = _relabel(path, labels, lead_names)
    if fs is not None and fmt in ("wfdb", "dicom"):
        raise DataError(f"{path}: fs is read from the {fmt} file; do not pass it")

    data, derived = _select_leads(path, signal, labels, spec.leads)
    n_orig = data.shape[1]
    seconds = n_orig / rate
    if seconds < MIN_SECONDS:
        raise DataError(
            f"{path}: ECG is {seconds:.3f} s long ({n_orig} samples at {rate:g} Hz); need at least {MIN_SECONDS:g} s"
        )

    data = _resample(data, rate, spec.sampling_rate)
    target = spec.samples
    padded = 0
    if data.shape[1] < target:
        if not pad:
            raise DataError(
                f"{path}: ECG is {seconds:.2f} s long, shorter than the {spec.seconds:g} s window "
                f"({data.shape[1]} < {target} samples at {spec.sampling_rate} Hz); "
                "pass pad=True to pad with edge values"
            )
        padded = target - data.shape[1]
        data = np.pad(data, ((0, 0), (0, padded)), mode="edge")
    data = data[:, :target]

    if spec.normalize:
        mean = data.mean(axis=1, keepdims=True)
        std = data.std(axis=1, keepdims=True)
        # A flat lead stays all zeros rather than dividing by zero.
        data = (data - mean) / np.where(std > 0, std, 1.0)

    out = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: ECG values overflow float32 after conversion to mV")
    return ECGSignal(
        data=out,
        sampling_rate=spec.sampling_rate,
        leads=spec.leads,
        source=str(path),
        original_rate=float(rate),
        original_seconds=float(seconds),
        format=fmt,
        derived=derived,
        padded_samples=padded,
        normalized=spec.normalize,
    )


# ----------------------------------------------------------------------------------------------------------------
# format readers: each returns (signal (channels, samples) float64 in mV, channel labels, sampling rate in Hz)


def check_sampling_rate(path: str | Path, rate, source: str) -> float:
    """``rate`` as a float when it is a finite number of Hz within MIN_SAMPLING_RATE..MAX_SAMPLING_RATE, else a
    DataError naming the file, where the rate came from (``source``) and the accepted range."""
    try:
        value = float(rate)
    except (TypeError, ValueError, OverflowError):
        value = float("nan")
    if not (math.isfinite(value) and MIN_SAMPLING_RATE <= value <= MAX_SAMPLING_RATE):
        raise DataError(f"{path}: {source}: sampling rate {rate} Hz is not a finite number within "
                        f"{MIN_SAMPLING_RATE:g}..{MAX_SAMPLING_RATE:g} Hz")
    return value


def check_ecg_size(path: str | Path, channels: int, samples: int, source: str) -> None:
    """Refuse an ECG whose header (``source``) gives more than ``max_ecg_samples`` samples over all channels, before
    any is read; count them against the request's decoded bytes."""
    count = max(0, channels) * max(0, samples)
    check_size(path, f"ECG samples ({channels} channel(s) x {samples:,}, from the {source})", count,
               "max_ecg_samples")
    charge_decoded(path, count * BYTES_PER_SAMPLE)


def _check_rate(path: Path, fs: float | None) -> float:
    if fs is None:
        raise DataError(f"{path}: the sampling rate is not stored in {path.suffix} files; pass fs=<Hz>")
    return check_sampling_rate(path, fs, "fs")


def _unit_scale(path: Path, unit: str | None, channel: str) -> float:
    key = (unit or "").strip().lower()
    if key not in _TO_MV:
        raise DataError(f"{path}: unknown units {unit!r} for channel {channel!r}; expected V, mV, uV or nV")
    return _TO_MV[key]


_WFDB_FS = re.compile(r"^(\d+(?:\.\d*)?)$")
_WFDB_GAIN = re.compile(r"^(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\((-?\d+)\)/(\S+)$")


def _read_wfdb_format16(header: Path, text: str) -> tuple[np.ndarray, list[str], float] | None:
    """Fast path for the common single-file, format-16 WFDB record (PTB-XL, most of PhysioNet's ECGs).

    wfdb.rdrecord spends ~10 ms per record parsing the header through pandas; this reads the same header fields
    and the little-endian int16 samples directly. Anything else (other formats, skew, byte offsets, multi-segment
    records, default gain) returns None and goes through wfdb. Tests check both paths agree.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return None
    record = lines[0].split()
    if len(record) < 4 or "/" in record[0] or not record[1].isdigit() or not _WFDB_FS.match(record[2]):
        return None
    n_sig, fs, n_samp = int(record[1]), check_sampling_rate(header, record[2], "WFDB header"), record[3]
    if not n_samp.isdigit() or n_sig < 1 or len(lines) < 1 + n_sig:
        return None
    files, gains, baselines, units, labels = set(), [], [], [], []
    for line in lines[1:1 + n_sig]:
        fields = line.split(maxsplit=8)
        if len(fields) < 3 or fields[1] != "16":
            return None
        gain = _WFDB_GAIN.match(fields[2])
        if gain is None or float(gain.group(1)) == 0:
            return None
        _check_wfdb_gain(header, float(gain.group(1)), fields[8] if len(fields) > 8 else f"signal {len(gains)}")
        files.add(fields[0])
        gains.append(float(gain.group(1)))
        baselines.append(int(gain.group(2)))
        units.append(gain.group(3))
        labels.append(fields[8] if len(fields) > 8 else "")
    if len(files) != 1:
        return None
    dat = header.with_name(files.pop())
    n = int(n_samp)
    check_ecg_size(header, n_sig, n, "WFDB header")
    check_file(dat, "ECG")
    if dat.stat().st_size < 2 * n * n_sig:
        raise DataError(f"{header}: WFDB signal file {dat.name} is truncated ({dat.stat().st_size} bytes, "
                        f"{2 * n * n_sig} expected)")
    digital = np.fromfile(dat, dtype="<i2", count=n * n_sig).reshape(n, n_sig).T
    signal = (digital - np.asarray(baselines, float)[:, None]) / np.asarray(gains)[:, None]
    signal[digital == -32768] = np.nan  # format 16's "no sample" value, as wfdb reads it
    scales = np.array([_unit_scale(header, u, name) for u, name in zip(units, labels)])
    return signal * scales[:, None], labels, fs


def _check_wfdb_gain(path: Path, gain: float, signal: str) -> None:
    """Refuse a negative or non-finite ADC gain: dividing by it would turn the lead upside down (or into NaN)
    without a word; a header that means an inverted lead must say so some other way."""
    if not (math.isfinite(gain) and gain >= 0):
        raise DataError(f"{path}: WFDB header gives signal {signal!r} the gain {gain:g} ADC units per unit; a gain "
                        "must be positive (a negative one would invert the lead)")


def _read_wfdb(path: Path) -> tuple[np.ndarray, list[str], float]:
    import wfdb  # optional dependency, needed only for WFDB records

    base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    header = base.with_name(base.name + ".hea")
    check_file(header, "ECG")
    try:
        fast = _read_wfdb_format16(header, header.read_text(encoding="latin-1"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read WFDB record: {type(exc).__name__}: {exc}") from exc
    if fast is not None:
        return fast
    try:
        head = wfdb.rdheader(str(base))
    except Exception as exc:  # as for rdrecord below
        raise DataError(f"{path}: cannot read WFDB header: {type(exc).__name__}: {exc}") from exc
    n_sig = int(getattr(head, "n_sig", 0) or 0)
    if getattr(head, "sig_len", None):
        check_ecg_size(path, n_sig, int(head.sig_len), "WFDB header")
    else:  # no length in the header: WFDB reads to the end of each signal file, at most one sample per byte
        files = {base.with_name(name) for name in (getattr(head, "file_name", None) or []) if name}
        sizes = [f.stat().st_size for f in files if f.is_file()]
        check_ecg_size(path, n_sig, sum(sizes), "WFDB signal file size")
    try:
        record = wfdb.rdrecord(str(base))
    except Exception as exc:  # wfdb raises many unrelated types (ValueError, IndexError, OSError...) on bad records
        raise DataError(f"{path}: cannot read WFDB record: {type(exc).__name__}: {exc}") from exc
    if record.p_signal is None or record.p_signal.ndim != 2 or record.p_signal.size == 0:
        raise DataError(f"{path}: WFDB record has no signal samples")
    labels = [str(name) for name in record.sig_name]
    for gain, name in zip(record.adc_gain or [], labels):
        _check_wfdb_gain(path, float(gain), name)
    scales = np.array([_unit_scale(path, unit, name) for unit, name in zip(record.units, labels)])
    signal = np.asarray(record.p_signal, dtype=np.float64).T * scales[:, None]
    return signal, labels, check_sampling_rate(path, record.fs, "WFDB header")


def _read_dicom(path: Path, spec: ECGSpec) -> tuple[np.ndarray, list[str], float]:
    with reading_errors(path, "DICOM ECG"):  # pydicom parses elements lazily, so a fault may surface late
        return _dicom_waveform(path, spec)


def _dicom_waveform(path: Path, spec: ECGSpec) -> tuple[np.ndarray, list[str], float]:
    ds = read_dicom(path, "DICOM ECG")
    groups = ds.get("WaveformSequence")
    if not groups:
        raise DataError(f"{path}: DICOM file has no waveform (WaveformSequence)")

    # A 12-lead ECG object may hold several multiplex groups (e.g. 10 s rhythm and a 1.2 s median beat):
    # use the longest one that carries every lead the spec needs.
    candidates = []
    for index, group in enumerate(groups):
        labels = [_dicom_channel_label(ch) for ch in group.get("ChannelDefinitionSequence", [])]
        try:
            _plan_leads(path, labels, spec.leads)
        except DataError as exc:
            candidates.append((None, index, labels, str(exc)))
            continue
        rate = check_sampling_rate(path, group.get("SamplingFrequency"), f"DICOM waveform group {index} "
                                                                          "SamplingFrequency")
        try:
            duration = float(group.NumberOfWaveformSamples) / rate
        except (AttributeError, TypeError, ValueError):
            candidates.append((None, index, labels, f"{path}: DICOM waveform group {index} has no valid "
                                                    "NumberOfWaveformSamples"))
            continue
        candidates.append((duration, index, labels, ""))
    usable = [c for c in candidates if c[0] is not None]
    if not usable:
        raise DataError(candidates[0][3] if len(candidates) == 1 else
                        f"{path}: no DICOM waveform group has the leads {', '.join(spec.leads)}; "
                        f"groups hold {[c[2] for c in candidates]}")
    _, index, labels, _ = max(usable, key=lambda c: c[0])
    group = groups[index]
    try:
        channels, samples = int(group.NumberOfWaveformChannels), int(group.NumberOfWaveformSamples)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: DICOM waveform group {index} has no valid channel or sample count: {exc}") from exc
    check_ecg_size(path, channels, samples, f"DICOM waveform group {index}")
    try:
        scaled = ds.waveform_array(index)  # applies channel sensitivity, correction factor and baseline
    except Exception as exc:  # pydicom raises ValueError/AttributeError/NotImplementedError on malformed groups
        raise DataError(f"{path}: cannot decode DICOM waveform group {index}: {exc}") from exc
    scales = []
    for channel, label in zip(group.ChannelDefinitionSequence, labels):
        units = channel.get("ChannelSensitivityUnitsSequence")
        if not units:
            raise DataError(f"{path}: DICOM channel {label!r} has no sensitivity units")
        code = units[0]
        value = str(code.get("CodeValue", ""))
        unit = value if value.strip().lower() in _TO_MV else code.get("CodeMeaning")
        scales.append(_unit_scale(path, unit, label))
    signal = np.asarray(scaled, dtype=np.float64).T * np.asarray(scales)[:, None]
    return signal, labels, check_sampling_rate(path, group.SamplingFrequency, "DICOM SamplingFrequency")


def _dicom_channel_label(channel) -> str:
    source = channel.get("ChannelSourceSequence")
    if source and source[0].get("CodeMeaning"):
        return str(source[0].CodeMeaning)
    return str(channel.get("ChannelLabel", ""))


def _read_npy(path: Path, fs: float | None, lead_names: Sequence[str] | None) -> tuple[np.ndarray, list[str], float]:
    rate = _check_rate(path, fs)
    with reading_errors(path, "ECG array"), path.open("rb") as fh:  # np.load raises SyntaxError, ... on bad headers
        check_npy_header(path, fh)
        arr = np.load(fh, allow_pickle=False)
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
        kind = getattr(arr, "dtype", type(arr).__name__)
        raise DataError(f"{path}: ECG must be one array of real numbers, got {kind}")
    labels = list(lead_names) if lead_names is not None else list(ENCODER_LEADS)
    if arr.ndim != 2 or arr.shape[0] != len(labels):
        hint = " (transposed? save it as leads x samples)" if arr.ndim == 2 and arr.shape[1] == len(labels) else ""
        raise DataError(f"{path}: ECG array shape {arr.shape} does not match {len(labels)} leads {labels}{hint}")
    return arr.astype(np.float64), labels, rate


def _read_csv(path: Path, fs: float | None) -> tuple[np.ndarray, list[str], float]:
    rate = _check_rate(path, fs)
    # every value takes at least two characters (a digit and a separator or line end)
    check_ecg_size(path, 1, path.stat().st_size // 2, "CSV file size")
    try:
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), None)
        if not header:
            raise DataError(f"{path}: CSV has no header row naming the leads")
        values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ECG CSV: {exc}") from exc
    labels = [name.strip() for name in header]
    if values.size == 0:
        raise DataError(f"{path}: ECG CSV has no data rows")
    if values.shape[1] != len(labels):
        raise DataError(f"{path}: CSV has {values.shape[1]} data columns but {len(labels)} header names")
    return values.T, labels, rate


# ----------------------------------------------------------------------------------------------------------------
# lead selection and resampling


def _relabel(path: Path, labels: list[str], lead_names: Sequence[str]) -> list[str]:
    if len(lead_names) != len(labels):
        raise DataError(f"{path}: lead_names has {len(lead_names)} names but the file has {len(labels)} channels")
    return list(lead_names)


def _plan_leads(path: Path, labels: Sequence[str], wanted: Sequence[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Map each wanted lead to a channel index; plan Einthoven derivations for a missing I or II."""
    index: dict[str, int] = {}
    for i, label in enumerate(labels):
        name = canonical_lead(label)
        if name is None:
            continue
        if name in index:
            raise DataError(f"{path}: lead {name} appears twice (channels {labels[index[name]]!r} and {label!r})")
        index[name] = i
    derived: dict[str, str] = {}
    missing = []
    for name in wanted:
        if name in index:
            continue
        formula, recipe = _DERIVATIONS.get(name, ("", ()))
        if recipe and all(src in index for src, _ in recipe):
            derived[name] = formula
        else:
            missing.append(name)
    if missing:
        present = sorted(index, key=STANDARD_LEADS.index)
        raise DataError(f"{path}: ECG is missing lead(s) {', '.join(missing)} (has {', '.join(present) or 'none'})")
    return index, derived


def _select_leads(path: Path, signal: np.ndarray, labels: Sequence[str], wanted: Sequence[str]):
    index, derived = _plan_leads(path, labels, wanted)
    rows = []
    for name in wanted:
        if name in index:
            rows.append(signal[index[name]])
        else:
            rows.append(sum(w * signal[index[src]] for src, w in _DERIVATIONS[name][1]))
    data = np.stack(rows).astype(np.float64)
    if data.shape[1] == 0:
        raise DataError(f"{path}: ECG has no samples")
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: ECG has {bad} non-finite value(s) (NaN or inf) in the leads used")
    return data, derived


def resample_ratio(rate: float, target: float) -> Fraction:
    """``target / rate`` as ``up / down`` with both at most MAX_RESAMPLE_FACTOR: the nearest such fraction, so that
    a rate like 1000.001 Hz resamples as 1000 Hz does instead of asking for a filter of millions of taps."""
    exact = Fraction(target) / Fraction(rate)
    if exact <= 1:
        return exact.limit_denominator(MAX_RESAMPLE_FACTOR)
    return 1 / (1 / exact).limit_denominator(MAX_RESAMPLE_FACTOR)


def _resample(data: np.ndarray, rate: float, target: int) -> np.ndarray:
    ratio = resample_ratio(rate, target)
    if ratio == 1:
        return data
    # Polyphase FIR resampling is anti-aliased; "line" padding avoids a dip toward zero at the record ends.
    up, down = ratio.numerator, ratio.denominator
    return resample_poly(data, up, down, axis=1, window=_lowpass(up, down), padtype="line")


@functools.lru_cache(maxsize=64)  # at most 64 x 160 kB: up and down are bounded by MAX_RESAMPLE_FACTOR
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter resample_poly designs by default (Kaiser, beta 5), designed once per ratio."""
    if max(up, down) > MAX_RESAMPLE_FACTOR:
        raise ValueError(f"resampling factors {up}/{down} exceed {MAX_RESAMPLE_FACTOR}")
    half_len = 10 * max(up, down)
    taps = firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0))
    taps.setflags(write=False)  # shared between calls; resample_poly copies it before scaling
    return taps
