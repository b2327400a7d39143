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


@pytest.fixture(scope="session")
def tiny_vllm(tmp_path_factory):
    """``build_tiny(seed=0)`` saved to a folder, and one vLLM engine over it for the whole session (an engine takes
    about a minute to start on 2 cores). Skips where vLLM is not installed (``make test-vllm`` installs it)."""
    pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` builds an environment with it")
    import os

    from qoqmed.infer.vllm_engine import VLLMEngine
    from qoqmed.modeling.tiny import build_tiny

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; plenty for the tiny model
    folder = tmp_path_factory.mktemp("tiny_vllm") / "model"
    processor, model = build_tiny(seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    engine = VLLMEngine(folder, max_model_len=2048, dtype="float32", seed=0)
    yield folder, engine
    engine.close()
