"""Runs the supervised warm start (``train_sft``) for the multi-process test and records what it ran.

    python tests/sft_worker.py MODEL_DIR RECORDS.jsonl OUT_DIR [--batch-size 4] [--max-steps 2]
    accelerate launch --config_file configs/accelerate/fsdp2_cpu_2proc.yaml tests/sft_worker.py ... --batch-size 2

The warm-started model goes to ``OUT_DIR/model``. Each process writes ``OUT_DIR/sft_rank{RANK}.json``: the
distributed type accelerate ran, whether the trained model's parameters are FSDP2 shards, and the logged history.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from accelerate.state import PartialState

from qoqmed.data.schema import load_records
from qoqmed.modeling import QoQMedForConditionalGeneration, QoQMedProcessor
from qoqmed.train.recipe import end_distributed
from qoqmed.train.settings import LoRASettings, SFTSettings
from qoqmed.train.sft import train_sft
from qoqmed.train.sharding import is_sharded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("records")
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters (the lora section's defaults)")
    a = ap.parse_args()
    processor = QoQMedProcessor.from_pretrained(a.model)
    model = QoQMedForConditionalGeneration.from_pretrained(a.model)
    settings = SFTSettings(max_steps=a.max_steps, batch_size=a.batch_size, logging_steps=1, learning_rate=1e-2,
                           warmup_steps=0, bf16=False, progress_bar=False)
    history = train_sft(model, processor, load_records(a.records), a.out / "sft", settings,
                        model_dir=a.out / "model", lora=LoRASettings() if a.lora else None)
    facts = {"distributed_type": PartialState().distributed_type.value, "sharded": is_sharded(model),
             "history": history}
    (a.out / f"sft_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(facts))
    end_distributed()


if __name__ == "__main__":
    main()
