"""Data loading speed: ECG records/s and images/s through the readers training uses, on one core.

    python benchmarks/data_loading.py [--ecg 400] [--images 300] [--out benchmarks/results/data_loading.json]

- ECG: PTB-XL-shaped WFDB records (12 leads, 500 Hz, 10 s, 16-bit) -> ``load_ecg``: WFDB read, lead selection
  (I, II, V1..V6), anti-aliased polyphase resampling to 250 Hz, crop to 2500 samples, float32.
- Images: ``load_image`` -> RGB ``PIL.Image`` for 512x512 8-bit grayscale PNG (an X-ray export), 1024x1024 RGB
  PNG (a fundus photograph) and DICOM: pydicom's CT_small (128x128, HU via rescale) and a 512x512 16-bit CT
  slice written from it (modality LUT, window, RGB).
- Volumes: ``load_volume`` of a 6-slice DICOM series folder (512x512) and nibabel's anatomical.nii, 4 slices.

Each figure is the median of ``--repeats`` passes over all files, after a warm-up pass (so the OS file cache is
warm, as in an epoch after the first), as items per wall-clock second and per CPU second of this process. Torch
and BLAS are limited to one thread, so both are per-core figures; on a machine shared with other work the CPU
figure is the one that does not depend on the neighbours.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import wfdb  # noqa: E402
from nibabel.testing import data_path as nib_data  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from qoqmed.data.ecg import STANDARD_LEADS  # noqa: E402
from qoqmed.data.readers import load_ecg, load_image  # noqa: E402
from qoqmed.data.volumes import load_volume  # noqa: E402


def _rate(fn, items, repeats: int) -> dict:
    """Items per second of wall time and per second of this process's CPU time (median of ``repeats``).

    The CPU-time figure is the per-core rate even when other processes share the machine's cores.
    """
    for item in items[: max(1, len(items) // 10)]:
        fn(item)  # warm-up: imports, caches
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for item in items:
            fn(item)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": round(len(items) / statistics.median(wall), 1),
            "cpu": round(len(items) / statistics.median(cpu), 1)}


def _ecg_records(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    t = np.arange(5000) / 500.0
    paths = []
    for i in range(n):
        hr = rng.uniform(50, 110) / 60
        beats = np.sin(2 * np.pi * hr * t) ** 31  # narrow peaks like QRS complexes
        sig = np.stack([beats * rng.uniform(0.5, 2.0) + 0.05 * rng.standard_normal(t.size) for _ in STANDARD_LEADS])
        name = f"{i:05d}_hr"
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=sig.T,
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        paths.append(folder / f"{name}.hea")
    return paths


def _ct_512(folder: Path, n: int) -> list[Path]:
    """512x512 16-bit CT slices: CT_small's real pixels upsampled, with its rescale and a stored window."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big = np.kron(src.pixel_array, np.ones((4, 4), src.pixel_array.dtype))
    uid = generate_uid()
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.Rows, ds.Columns = big.shape
        ds.PixelData = big.tobytes()
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * i]
        path = folder / f"ct{i:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ecg", type=int, default=400, help="WFDB records to write and read")
    parser.add_argument("--images", type=int, default=200, help="files per image kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_loading.json")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="qoqmed-bench-"))
    try:
        (tmp / "ecg").mkdir()
        ecgs = _ecg_records(tmp / "ecg", args.ecg, rng)
        assert load_ecg(ecgs[0]).shape == (8, 2500)

        (tmp / "img").mkdir()
        gray, color = [], []
        for i in range(args.images):
            g = tmp / "img" / f"g{i}.png"
            Image.fromarray(rng.integers(0, 256, (512, 512), np.uint8)).save(g)
            gray.append(g)
            c = tmp / "img" / f"c{i}.png"
            Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), np.uint8)).save(c, compress_level=1)
            color.append(c)
        small = []
        for i in range(args.images):
            p = tmp / "img" / f"s{i}.dcm"
            shutil.copy(get_testdata_file("CT_small.dcm"), p)
            small.append(p)
        (tmp / "ct").mkdir()
        ct512 = _ct_512(tmp / "ct", args.images)
        (tmp / "series").mkdir()
        series = [tmp / "series" / f"s{k}" for k in range(10)]
        for folder in series:
            folder.mkdir()
            for p in ct512[:6]:
                shutil.copy(p, folder / p.name)
        nifti = [Path(nib_data) / "anatomical.nii"] * 50

        results = {
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "threads": 1, "numpy": np.__version__,
                        "pydicom": pydicom.__version__, "wfdb": wfdb.__version__,
                        "load_average_1min": round(os.getloadavg()[0], 2)},
            "ecg_records_per_s": _rate(load_ecg, ecgs, args.repeats),
            "ecg_workload": "WFDB 12 leads x 500 Hz x 10 s (16-bit) -> 8 leads x 250 Hz x 10 s float32 mV",
            "images_per_s": {
                "png_gray_512": _rate(load_image, gray, args.repeats),
                "png_rgb_1024": _rate(load_image, color, args.repeats),
                "dicom_ct_128": _rate(load_image, small, args.repeats),
                "dicom_ct_512": _rate(load_image, ct512, args.repeats),
            },
            "volumes_per_s": {
                "dicom_series_6x512x512_4_slices": _rate(lambda p: load_volume(p, 4, "lung"), series, args.repeats),
                "nifti_anatomical_4_slices": _rate(lambda p: load_volume(p, 4), nifti, args.repeats),
            },
            "n": {"ecg": len(ecgs), "images_per_kind": args.images, "repeats": args.repeats},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
