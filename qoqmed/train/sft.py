"""Supervised warm start: teach a model the answer format (<think>, JSON boxes, \\boxed{}) before RL.

A randomly initialised model never samples a parsable answer, so RL would see only zero rewards. A short
supervised pass on the records' reference answers fixes that; DRPO then improves the diagnosis itself. The
training loop is TRL's SFTTrainer (see :func:`qoqmed.train.grpo.train_sft`, the module that holds all TRL code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.schema import Record


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
    gradient_accumulation_steps: int = 1
    save_steps: int | None = None
    eval_steps: int | None = None
    bf16: bool | None = None           # None: on when CUDA is available
    gradient_checkpointing: bool = False
    report_to: list[str] = field(default_factory=list)  # e.g. ["tensorboard"]
    progress_bar: bool = True
    enabled: bool = True               # recipe: false skips the warm start (a model that already answers)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"sft.batch_size={self.batch_size} must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0 and self.enabled:
            raise ValueError("sft: set epochs > 0 or max_steps > 0, or enabled: false to skip the warm start")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]


def warm_start(model, processor, records: Sequence[Record], out_dir: str | Path,
               settings: SFTSettings | None = None, eval_records: Sequence[Record] | None = None) -> list[dict]:
    """Fine-tune ``model`` in place on the records' reference answers; returns the logged loss history."""
    from .grpo import train_sft

    history = train_sft(model, processor, records, out_dir, settings or SFTSettings(), eval_records=eval_records)
    return [h for h in history if "loss" in h]
