"""Supervised warm start: teach a model the answer format (<think>, JSON boxes, \\boxed{}) before RL.

A randomly initialised model never samples a parsable answer, so RL would see only zero rewards. A short
supervised pass on the records' reference answers fixes that; DRPO then improves the diagnosis itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from ..data.prompts import encode_batch, load_record
from ..data.schema import Record
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor


@dataclass
class SFTSettings:
    epochs: float = 3.0
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_steps: float = 0.05
    weight_decay: float = 0.0
    max_steps: int = -1
    seed: int = 0
    logging_steps: int = 10


class _Records(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[Record]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


class _Collator:
    def __init__(self, processor: QoQMedProcessor):
        self.processor = processor

    def __call__(self, records: list[Record]) -> dict[str, torch.Tensor]:
        return encode_batch(self.processor, [load_record(r) for r in records], with_targets=True)


def warm_start(model: QoQMedForConditionalGeneration, processor: QoQMedProcessor, records: Sequence[Record],
               out_dir: str | Path, settings: SFTSettings | None = None) -> list[dict]:
    """Fine-tune ``model`` in place on the records' reference answers; returns the logged loss history."""
    s = settings or SFTSettings()
    if not records:
        raise ValueError("the warm start needs at least one training record")
    args = TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate, warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay, lr_scheduler_type="cosine", logging_steps=s.logging_steps,
        save_strategy="no", report_to=[], remove_unused_columns=False, seed=s.seed, data_seed=s.seed,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Records(records), data_collator=_Collator(processor))
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]
