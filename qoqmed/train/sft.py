"""Supervised warm start: teach a model the answer format (<think>, JSON boxes, \\boxed{}) before RL.

A randomly initialised model never samples a parsable answer, so RL would see only zero rewards. A short
supervised pass on the records' reference answers fixes that; DRPO then improves the diagnosis itself. The
training loop is TRL's SFTTrainer (:func:`train_sft`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ..data.prompts import encode_batch, load_record
from ..data.schema import Record
from ..modeling import QoQMedProcessor
from .settings import LoRASettings, SFTSettings
from .sharding import ShardedTrainerMixin


def warm_start(model, processor, records: Sequence[Record], out_dir: str | Path,
               settings: SFTSettings | None = None, eval_records: Sequence[Record] | None = None,
               lora: LoRASettings | None = None, adapter_dir: str | Path | None = None,
               model_dir: str | Path | None = None) -> list[dict]:
    """Fine-tune ``model`` in place on the records' reference answers; returns the logged loss history.

    With ``lora`` only adapters train; they are saved to ``adapter_dir`` (when given, with the processor) and then
    merged into ``model``, so that the caller holds the warm-started model either way. ``model_dir``: where the
    warm-started model is written with the processor (see :func:`train_sft`)."""
    history = train_sft(model, processor, records, out_dir, settings or SFTSettings(), eval_records=eval_records,
                        lora=lora, adapter_dir=adapter_dir, model_dir=model_dir)
    return [h for h in history if "loss" in h]


class QoQMedSFTTrainer(ShardedTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer, sharded under an FSDP launch on CPU processes too, with a final save that gathers the
    whole model under a sharded state dict (``qoqmed.train.sharding``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Qwen2.5-VL declares accepts_loss_kwargs = False, so transformers would count no answer tokens and every
        # micro-batch would average its own: with several processes (or accumulation steps) a token would weigh
        # more where fewer tokens share its micro-batch, and the loss would depend on the split. TRL's SFT loss
        # divides by that count itself (the model never receives it), so it can be the count over every micro-batch.
        self.model_accepts_loss_kwargs = True


class _SFTCollator:
    """Rows carry only a record id; the batch is encoded with the chat template and answer-only labels."""

    def __init__(self, processor: QoQMedProcessor, records: dict[str, Record], prompt_style: str = "qoqmed"):
        self.processor = processor
        self.records = records
        self.prompt_style = prompt_style

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return encode_batch(self.processor, [load_record(self.records[r["id"]], self.prompt_style) for r in rows], with_targets=True)


def train_sft(model, processor: QoQMedProcessor, records: Sequence[Record], out_dir: str | Path,
              settings: SFTSettings, eval_records: Sequence[Record] | None = None,
              lora: LoRASettings | None = None, adapter_dir: str | Path | None = None,
              model_dir: str | Path | None = None) -> list[dict]:
    """Fine-tune ``model`` in place on the records' reference answers with TRL's SFTTrainer.

    The loss covers the answer tokens only (``<think>``, boxes, ``\\boxed{}``), as ``encode_batch`` labels
    them; images and ECGs are encoded per batch by the collator. Returns the logged history.

    ``model_dir``: where the warm-started model (adapters merged) and the processor are written. Every process
    must call this: under FSDP ``model`` ends up holding this process's shard only, and the whole model is
    gathered from all of them into ``model_dir``.
    """
    if not records:
        raise ValueError("the warm start needs at least one training record")
    by_id = {r.id: r for r in records}
    if len(by_id) != len(records):
        raise ValueError("record ids must be unique within a training set")
    eval_ds = None
    if eval_records:
        by_id.update({r.id: r for r in eval_records})
        eval_ds = Dataset.from_list([{"id": r.id} for r in eval_records])
    s = settings
    bf16 = torch.cuda.is_available() if s.bf16 is None else s.bf16
    eval_steps = s.eval_steps
    args = SFTConfig(
        output_dir=str(out_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size, per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, learning_rate=s.learning_rate,
        warmup_steps=s.warmup_steps, weight_decay=s.weight_decay, lr_scheduler_type="cosine",
        logging_steps=s.logging_steps, save_strategy="steps" if s.save_steps else "no",
        save_steps=s.save_steps or 500, report_to=list(s.report_to),
        remove_unused_columns=False, seed=s.seed, data_seed=s.seed, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), bf16=bf16,
        gradient_checkpointing=s.gradient_checkpointing,
        eval_strategy="steps" if eval_ds is not None and eval_steps else "no", eval_steps=eval_steps,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
        disable_tqdm=not s.progress_bar,
    )
    trainer = QoQMedSFTTrainer(model=model, args=args,
                               train_dataset=Dataset.from_list([{"id": r.id} for r in records]),
                               eval_dataset=eval_ds, processing_class=processor,
                               data_collator=_SFTCollator(processor, by_id, s.prompt_style),
                               peft_config=lora.peft_config() if lora else None)
    trainer.train()
    if lora:
        if adapter_dir is not None:
            trainer.model.save_pretrained(adapter_dir)
            processor.save_pretrained(adapter_dir)
        trainer.model.merge_and_unload()  # the adapters fold into ``model``'s own modules
    if model_dir is not None:
        if lora:
            if trainer.args.should_save:
                model.save_pretrained(model_dir)
                processor.save_pretrained(model_dir)
        else:
            trainer.save_model(str(model_dir))  # with the processor; under FSDP every process joins the gather
        trainer.accelerator.wait_for_everyone()
    return trainer.state.log_history
