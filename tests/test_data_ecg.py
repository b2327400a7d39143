import numpy as np
import pydicom
import pytest
import wfdb

from qoqmed.data.ecg import ENCODER_LEADS, STANDARD_LEADS, ECGSpec, canonical_lead, read_ecg
from qoqmed.data.errors import DataError

FS = 500
SECONDS = 10
FREQ = 5.0
# A distinct amplitude (mV) per standard lead, so a lead picked by the wrong channel is caught.
AMPS = {name: 0.2 + 0.1 * k for k, name in enumerate(STANDARD_LEADS)}


def _sines(leads, fs=FS, seconds=SECONDS):
    t = np.arange(int(fs * seconds)) / fs
    return np.stack([AMPS[name] * np.sin(2 * np.pi * FREQ * t) for name in leads])


def _write_wfdb(tmp_path, leads, name="rec", units="mV", scale=1.0, fs=FS, seconds=SECONDS):
    sig = _sines(leads, fs, seconds) * scale
    wfdb.wrsamp(name, fs=fs, units=[units] * len(leads), sig_name=list(leads), p_signal=sig.T,
                fmt=["16"] * len(leads), write_dir=str(tmp_path))
    return tmp_path / name


def _peak(row):
    # Ignore the ends, where any FIR resampler has edge transients.
    n = row.size
    return float(np.abs(row[n // 10 : -n // 10]).max())


def test_spec_defaults_and_reference_compat():
    spec = ECGSpec()
    assert (spec.sampling_rate, spec.seconds, spec.samples, spec.leads) == (250, 10.0, 2500, ENCODER_LEADS)
    compat = ECGSpec.reference_compat()
    assert (compat.sampling_rate, compat.seconds, compat.samples) == (500, 5.0, 2500)
    with pytest.raises(ValueError):
        ECGSpec(leads=("I", "X1"))


LABELS = [("Lead I (Einthoven)", "I"), ("Lead II", "II"), ("ii", "II"), ("V1", "V1"), ("lead v6", "V6"),
          ("MDC_ECG_LEAD_AVR", "aVR"), ("III", "III"), ("Pleth", None)]


@pytest.mark.parametrize("label, name", LABELS)
def test_canonical_lead(label, name):
    assert canonical_lead(label) == name


def test_dicom_sample_12_lead():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    sig = read_ecg(path)
    assert sig.data.shape == (8, 2500) and sig.data.dtype == np.float32
    assert sig.sampling_rate == 250 and sig.leads == ENCODER_LEADS and sig.units == "mV"
    assert sig.original_rate == 1000.0 and sig.original_seconds == pytest.approx(10.0)
    assert sig.format == "dicom" and not sig.derived and sig.padded_samples == 0
    peak = np.abs(sig.data).max(axis=1)
    assert (peak > 0.05).all() and (peak < 5.0).all()  # QRS amplitudes of a real ECG, in mV not uV

    # The resampled signal tracks the native 1000 Hz rhythm strip (stored in uV) for the same leads.
    ds = pydicom.dcmread(path)
    native = ds.waveform_array(0)[:, [0, 1, 6, 7, 8, 9, 10, 11]].T / 1000.0
    for lead in range(8):
        r = np.corrcoef(native[lead, ::4][100:-100], sig.data[lead, 100:-100])[0, 1]
        assert r > 0.95

    compat = read_ecg(path, ECGSpec.reference_compat())
    assert compat.data.shape == (8, 2500) and compat.sampling_rate == 500


def test_dicom_shorter_than_window_needs_explicit_pad():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    spec = ECGSpec(seconds=12.0)
    with pytest.raises(DataError, match=r"waveform_ecg\.dcm: ECG is 10\.00 s long.*pad=True"):
        read_ecg(path, spec)
    sig = read_ecg(path, spec, pad=True)
    assert sig.data.shape == (8, 3000) and sig.padded_samples == 500
    assert (sig.data[:, 2500:] == sig.data[:, 2499:2500]).all()  # edge values, not zeros


def test_wfdb_shuffled_channels_resampled(tmp_path):
    order = list(np.random.default_rng(0).permutation(STANDARD_LEADS))
    base = _write_wfdb(tmp_path, order)
    for path in (base.with_suffix(".hea"), base.with_suffix(".dat"), base):
        sig = read_ecg(path)
        assert sig.data.shape == (8, 2500) and sig.sampling_rate == 250 and sig.format == "wfdb"
        assert sig.original_rate == 500 and sig.original_seconds == pytest.approx(10.0)
    for row, name in zip(sig.data, ENCODER_LEADS):
        assert _peak(row) == pytest.approx(AMPS[name], rel=0.02)
    # Same phase as the source sinusoid at 250 Hz.
    np.testing.assert_allclose(sig.data[2, 250:-250], _sines(["V1"], 250)[0, 250:-250], atol=0.02 * AMPS["V1"])


def test_wfdb_reference_compat_window(tmp_path):
    base = _write_wfdb(tmp_path, STANDARD_LEADS)
    sig = read_ecg(base.with_suffix(".hea"), ECGSpec.reference_compat())
    assert sig.data.shape == (8, 2500) and sig.sampling_rate == 500
    # No resampling at 500 Hz: the first 5 s of the record, unchanged (up to 16-bit storage).
    expected = _sines(ENCODER_LEADS)[:, :2500]
    np.testing.assert_allclose(sig.data, expected, atol=1e-3)


def test_wfdb_microvolts_are_converted(tmp_path):
    base = _write_wfdb(tmp_path, STANDARD_LEADS, units="uV", scale=1000.0)
    sig = read_ecg(base.with_suffix(".hea"))
    assert _peak(sig.data[0]) == pytest.approx(AMPS["I"], rel=0.02)


def test_wfdb_unknown_units(tmp_path):
    base = _write_wfdb(tmp_path, STANDARD_LEADS, units="furlong")
    with pytest.raises(DataError, match=r"unknown units 'furlong'"):
        read_ecg(base.with_suffix(".hea"))


def test_missing_precordial_lead_is_named(tmp_path):
    leads = [name for name in STANDARD_LEADS if name != "V3"]
    base = _write_wfdb(tmp_path, leads)
    with pytest.raises(DataError, match=r"rec\.hea: ECG is missing lead\(s\) V3"):
        read_ecg(base.with_suffix(".hea"))


def test_missing_limb_leads_without_einthoven_partner(tmp_path):
    leads = [name for name in STANDARD_LEADS if name not in ("II", "III")]
    base = _write_wfdb(tmp_path, leads)
    with pytest.raises(DataError, match=r"missing lead\(s\) II\b"):
        read_ecg(base.with_suffix(".hea"))


def test_derived_lead_ii_and_i(tmp_path):
    rng = np.random.default_rng(1)
    names = ["I", "III", "V1", "V2", "V3", "V4", "V5", "V6"]
    arr = rng.normal(size=(8, 2500)).astype(np.float32)
    np.save(tmp_path / "e.npy", arr)
    sig = read_ecg(tmp_path / "e.npy", fs=250, lead_names=names)
    assert sig.derived == {"II": "I + III"}
    np.testing.assert_allclose(sig.data[1], arr[0] + arr[1], rtol=1e-6)
    np.testing.assert_allclose(sig.data[0], arr[0])

    names = ["Lead II", "Lead III", "V1", "V2", "V3", "V4", "V5", "V6"]
    sig = read_ecg(tmp_path / "e.npy", fs=250, lead_names=names)
    assert sig.derived == {"I": "II - III"}
    np.testing.assert_allclose(sig.data[0], arr[0] - arr[1], rtol=1e-5, atol=1e-6)


def test_npy_path(tmp_path):
    arr = _sines(ENCODER_LEADS).astype(np.float32)
    np.save(tmp_path / "e.npy", arr)
    with pytest.raises(DataError, match=r"e\.npy: the sampling rate is not stored.*fs="):
        read_ecg(tmp_path / "e.npy")
    sig = read_ecg(tmp_path / "e.npy", fs=FS)
    assert sig.data.shape == (8, 2500) and sig.format == "npy"
    assert _peak(sig.data[7]) == pytest.approx(AMPS["V6"], rel=0.02)
    np.save(tmp_path / "t.npy", arr.T)
    with pytest.raises(DataError, match="transposed"):
        read_ecg(tmp_path / "t.npy", fs=FS)


def test_csv_path_with_header_in_any_order(tmp_path):
    order = ["time", "V6", "II", "I", "V1", "V2", "V5", "V3", "V4", "III"]
    leads = order[1:]
    t = np.arange(FS * SECONDS) / FS
    table = np.column_stack([t, _sines(leads).T])
    path = tmp_path / "e.csv"
    np.savetxt(path, table, delimiter=",", header=",".join(order), comments="")
    with pytest.raises(DataError, match=r"e\.csv: the sampling rate is not stored"):
        read_ecg(path)
    sig = read_ecg(path, fs=FS)
    assert sig.data.shape == (8, 2500) and sig.format == "csv"
    for row, name in zip(sig.data, ENCODER_LEADS):
        assert _peak(row) == pytest.approx(AMPS[name], rel=0.02)


def test_non_finite_values(tmp_path):
    arr = _sines(ENCODER_LEADS)
    arr[3, 100] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(DataError, match=r"nan\.npy: ECG has 1 non-finite value"):
        read_ecg(tmp_path / "nan.npy", fs=FS)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.npy: ECG file not found"):
        read_ecg(tmp_path / "missing.npy", fs=FS)
    with pytest.raises(DataError, match=r"nothere\.hea: ECG file not found"):
        read_ecg(tmp_path / "nothere.hea")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(DataError, match=r"junk\.dcm: cannot read DICOM"):
        read_ecg(tmp_path / "junk.dcm")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"junk\.npy: cannot read ECG array"):
        read_ecg(tmp_path / "junk.npy", fs=FS)
    (tmp_path / "x.edf").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported ECG file type"):
        read_ecg(tmp_path / "x.edf")
    base = _write_wfdb(tmp_path, STANDARD_LEADS)
    base.with_suffix(".dat").unlink()
    with pytest.raises(DataError, match=r"rec\.hea: cannot read WFDB record"):
        read_ecg(base.with_suffix(".hea"))


def test_too_short_record(tmp_path):
    np.save(tmp_path / "short.npy", _sines(ENCODER_LEADS, seconds=0.5))
    with pytest.raises(DataError, match=r"short\.npy: ECG is 0\.500 s long.*at least 1 s"):
        read_ecg(tmp_path / "short.npy", fs=FS, pad=True)


def test_normalize_z_scores_each_lead(tmp_path):
    np.save(tmp_path / "e.npy", _sines(ENCODER_LEADS) + 3.0)
    sig = read_ecg(tmp_path / "e.npy", ECGSpec(normalize=True), fs=FS)
    assert sig.normalized
    np.testing.assert_allclose(sig.data.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose(sig.data.std(axis=1), 1, atol=1e-3)


def test_record_readers_take_dicom_waveforms():
    from pydicom.data import get_testdata_file

    from qoqmed.data.readers import load_ecg

    arr = load_ecg(get_testdata_file("waveform_ecg.dcm"))
    assert arr.shape == (8, 2500) and arr.dtype == np.float32
    assert np.allclose(arr, read_ecg(get_testdata_file("waveform_ecg.dcm")).data)


@pytest.mark.parametrize("fmt", ["16", "212", "32"])
def test_wfdb_fast_path_agrees_with_wfdb(tmp_path, fmt):
    """Format-16 records are read without wfdb's header parser; every format must give wfdb's values."""
    from qoqmed.data.ecg import _read_wfdb

    rng = np.random.default_rng(1)
    leads = ["V2", "I", "aVR", "II", "V1", "V3", "V4", "V5", "V6", "III"]
    sig = rng.normal(scale=0.3, size=(len(leads), 3000))
    wfdb.wrsamp("rec", fs=400, units=["mV"] * 9 + ["uV"], sig_name=leads, p_signal=sig.T * np.array([1] * 9 + [1000])[None],
                fmt=[fmt] * len(leads), adc_gain=[200.0 + 7 * k for k in range(len(leads) - 1)] + [1.0],
                baseline=[k * 3 - 10 for k in range(len(leads))], write_dir=str(tmp_path))
    ours, labels, fs = _read_wfdb(tmp_path / "rec.hea")
    ref = wfdb.rdrecord(str(tmp_path / "rec"))
    expected = ref.p_signal.T * np.array([1.0] * 9 + [1e-3])[:, None]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert labels == ref.sig_name and fs == ref.fs == 400


def test_wfdb_fast_path_gaps_and_truncation(tmp_path):
    leads = list(ENCODER_LEADS)
    _write_wfdb(tmp_path, leads)
    dat = tmp_path / "rec.dat"
    raw = np.fromfile(dat, dtype="<i2").reshape(-1, len(leads))
    raw[100, 2] = -32768  # format 16's "no sample" marker
    raw.tofile(dat)
    with pytest.raises(DataError, match="1 non-finite value"):
        read_ecg(tmp_path / "rec.hea")
    dat.write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"rec\.dat is truncated"):
        read_ecg(tmp_path / "rec.hea")


# ----------------------------------------------------------------------------------------------------------------
# sampling rates: validated wherever they come from, and resampling stays small whatever the rate


def _set_header_rate(base, rate: str):
    hea = base.with_suffix(".hea")
    first, rest = hea.read_text().split("\n", 1)
    fields = first.split()
    fields[2] = rate
    hea.write_text(" ".join(fields) + "\n" + rest)
    return hea


@pytest.mark.parametrize("fmt", ["16", "212"])  # the fast format-16 reader and wfdb's own
@pytest.mark.parametrize("rate", ["0", "0.0006", "20000", "49.9"])
def test_wfdb_header_rates_out_of_range_are_named(tmp_path, fmt, rate):
    base = tmp_path / "rec"
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 8, sig_name=list(ENCODER_LEADS), p_signal=_sines(ENCODER_LEADS).T,
                fmt=[fmt] * 8, write_dir=str(tmp_path))
    hea = _set_header_rate(base, rate)
    with pytest.raises(DataError, match=r"rec\.hea: WFDB header: sampling rate [0-9.]+ Hz is not a finite number "
                                        r"within 50\.\.10000 Hz"):
        read_ecg(hea)


def test_an_odd_rate_resamples_with_a_small_filter(tmp_path):
    """1000.001 Hz is a valid rate; it must not turn into a filter of millions of taps (it resamples as 1000 Hz)."""
    import tracemalloc
    from fractions import Fraction

    from qoqmed.data.ecg import MAX_RESAMPLE_FACTOR, resample_ratio

    assert resample_ratio(1000.001, 250) == Fraction(1, 4)
    assert resample_ratio(257, 250) == Fraction(250, 257) and resample_ratio(128, 250) == Fraction(125, 64)
    for rate in (50.0, 50.0001, 333.3333, 9999.999, 10_000.0, 777.77):
        ratio = resample_ratio(rate, 250)
        assert max(ratio.numerator, ratio.denominator) <= MAX_RESAMPLE_FACTOR
        assert abs(float(ratio) * rate / 250 - 1) < 2e-3  # the effective rate is within 0.2 % of the stated one

    base = tmp_path / "rec"
    wfdb.wrsamp("rec", fs=1000, units=["mV"] * 8, sig_name=list(ENCODER_LEADS),
                p_signal=_sines(ENCODER_LEADS, fs=1000).T, fmt=["16"] * 8, write_dir=str(tmp_path))
    hea = _set_header_rate(base, "1000.001")
    tracemalloc.start()
    try:
        sig = read_ecg(hea)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sig.data.shape == (8, 2500) and sig.original_rate == 1000.001
    assert peak < 20 * 8 * 10_000 * 8  # a small multiple of the 8 x 10,000 float64 signal (old filter: 160 MB)
    assert _peak(sig.data[0]) == pytest.approx(AMPS["I"], rel=0.02)


@pytest.mark.parametrize("fs", [0, -5, float("nan"), float("inf"), 0.0006, 1e9, "fast"])
@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_fs_argument_out_of_range_is_named(tmp_path, fs, suffix):
    path = tmp_path / f"e{suffix}"
    if suffix == ".npy":
        np.save(path, _sines(ENCODER_LEADS).astype(np.float32))
    else:
        path.write_text("I,II\n1,2\n3,4\n")
    with pytest.raises(DataError, match=rf"e\{suffix}: fs: sampling rate .* Hz is not a finite number within"):
        read_ecg(path, fs=fs)


@pytest.mark.parametrize("rate", ["0", "0.0006", "20000"])
def test_dicom_sampling_frequency_out_of_range_is_named(tmp_path, rate):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    for group in ds.WaveformSequence:
        group.SamplingFrequency = rate
    ds.save_as(tmp_path / "w.dcm")
    with pytest.raises(DataError, match=r"w\.dcm: DICOM waveform group 0 SamplingFrequency: sampling rate "):
        read_ecg(tmp_path / "w.dcm")
