import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def mini_records_path(tmp_path_factory):
    """A 12-row jsonl with PNG images + masks (chest X-ray) and .npy ECGs, two labels per domain."""
    root = tmp_path_factory.mktemp("mini")
    (root / "chest_xray").mkdir()
    (root / "ecg").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        if i % 3 == 0:
            np.save(root / "ecg" / f"{i}.npy", rng.standard_normal((8, 2500)).astype("float32"))
            rows.append(dict(id=f"ecg-{i}", domain="ecg", dataset="mini/ecg", split="train",
                             problem="<ecg>\nWhat is the rhythm? Options: Normal, A. Fib/Aflutter.",
                             answer=["Normal", "A. Fib/Aflutter"][i % 2], images=[], ecg=[f"ecg/{i}.npy"],
                             boxes=[]))
        else:
            img = (rng.random((84, 112, 3)) * 80).astype("uint8")
            img[20:50, 30:60] = 220
            Image.fromarray(img).save(root / "chest_xray" / f"{i}.png")
            mask = np.zeros((84, 112), "uint8")
            mask[20:50, 30:60] = 255
            Image.fromarray(mask).save(root / "chest_xray" / f"{i}_mask.png")
            label = ["Cardiomegaly", "Pneumothorax"][i % 2]
            rows.append(dict(id=f"cxr-{i}", domain="chest_xray", dataset="mini/cxr", split="train",
                             problem="<image>\nWhich findings are present? Options: Cardiomegaly, Pneumothorax.",
                             answer=label, images=[f"chest_xray/{i}.png"], ecg=[],
                             boxes=[{"bbox_2d": [30, 20, 60, 50], "label": label, "image": 0}],
                             segmentation_path=f"chest_xray/{i}_mask.png"))
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
