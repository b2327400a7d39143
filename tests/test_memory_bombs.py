"""Decompression bombs are refused from their headers, within a bounded address space.

Each small file claims a huge decoded size. The reads run in a child process whose address space is capped
(``resource.setrlimit(RLIMIT_AS)``) a little above what it uses after importing the readers, so a reader that
decoded first and measured afterwards would die with MemoryError instead of giving the clean DataError.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

HEADROOM = 256 << 20  # bytes of address space the child may add after its imports


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def _bombs(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (reader call, file) for files of a few KB that claim gigabytes."""
    (folder / "huge.png").write_bytes(_png_header(9_000, 9_000))  # 324 MB as RGBA: over the headroom, under Pillow's own bomb check
    nii = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    nii.header.set_data_shape((10_000, 10_000, 10_000))
    raw = nii.header.binaryblock + b"\0" * 4 + b"\0" * 4096
    (folder / "huge.nii.gz").write_bytes(gzip.compress(raw))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60_000, 60_000, 50
    ds.save_as(folder / "huge.dcm")
    with open(folder / "huge.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (10**5, 10**5)})
        fh.write(b"\0" * 64)
    (folder / "huge.hea").write_text("huge 12 500 2000000000\n" + "".join(
        f"huge.dat 16 200/mV 16 0 0 0 0 {lead}\n" for lead in ("I", "II", "III", "aVR", "aVL", "aVF",
                                                               "V1", "V2", "V3", "V4", "V5", "V6")))
    (folder / "huge.dat").write_bytes(b"\0" * 1024)
    return {
        "png": ("load_image", "huge.png"),
        "nifti": ("load_volume", "huge.nii.gz"),
        "dicom": ("load_volume", "huge.dcm"),
        "npy": ("load_ecg", "huge.npy"),
        "wfdb": ("read_ecg", "huge.hea"),
    }


CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from qoqmed.data.errors import DataError
    from qoqmed.data.readers import load_ecg, load_image
    from qoqmed.data.ecg import read_ecg
    from qoqmed.data.volumes import load_volume

    def vm_size():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    folder, headroom, bombs = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    cap = vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    readers = {"load_image": load_image, "load_volume": load_volume, "load_ecg": load_ecg, "read_ecg": read_ecg}
    out = {}
    for name, (reader, file) in bombs.items():
        try:
            readers[reader](folder / file)
            out[name] = "read"
        except DataError as exc:
            out[name] = "DataError: " + str(exc)
        except BaseException as exc:
            out[name] = type(exc).__name__ + ": " + str(exc)
    print(json.dumps(out))
""")


def test_bombs_are_refused_within_a_bounded_address_space(tmp_path):
    bombs = _bombs(tmp_path)
    assert max(p.stat().st_size for p in tmp_path.iterdir()) < 1 << 20
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(HEADROOM), json.dumps(bombs)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["png"].startswith("DataError: ") and "81,000,000 pixels" in out["png"], out["png"]
    assert "1,000,000,000,000 voxels" in out["nifti"] and out["nifti"].startswith("DataError"), out["nifti"]
    assert "180,000,000,000 pixels" in out["dicom"] and out["dicom"].startswith("DataError"), out["dicom"]
    assert "10,000,000,000 values" in out["npy"] and out["npy"].startswith("DataError"), out["npy"]
    assert "24,000,000,000 ECG samples" in out["wfdb"] and out["wfdb"].startswith("DataError"), out["wfdb"]
