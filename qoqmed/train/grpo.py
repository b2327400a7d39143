"""RL with verifiable rewards on TRL's GRPOTrainer, with our advantage estimators (GRPO, Dr.GRPO, DRPO).

This is the only module that imports TRL. Three things are added to the stock trainer:

1. ECG records ride along with each row. TRL's generation and log-prob passes only forward the keyword arguments
   it knows, so a forward pre-hook on the backbone hands ``ecg_values`` to any call whose ``input_ids`` hold ECG
   placeholders. Rows of a call are whole generation batches (internal chunking is switched off while ECG rows are
   present) so the records line up with the placeholders in order.
2. Advantages come from ``qoqmed.algos`` and are computed on the rewards gathered from every process, with the
   rows' domains gathered the same way, so all processes agree; each keeps its own slice.
3. Per-domain reward and, for DRPO, per-domain statistics are logged; the DRPO state is saved with checkpoints.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from ..algos.drpo import DRPO
from ..algos.grpo import group_advantages
from ..data.prompts import SYSTEM_PROMPT, Grounding, grounding, load_record, messages_for
from ..data.readers import load_ecg, load_mask
from ..data.schema import Record
from ..modeling import QoQMedProcessor
from ..rewards.scores import score

ESTIMATORS = ("grpo", "drgrpo", "drpo")
DRPO_STATE_FILE = "drpo_state.pt"


@dataclass
class RLSettings:
    estimator: str = "drpo"            # grpo | drgrpo | drpo
    drpo_mode: str = "paper"           # paper | reference
    drpo_history: int | None = None    # paper mode: keep the last H questions per domain
    drpo_kl_quantile: float | None = 0.75
    num_generations: int = 4
    num_iterations: int = 1            # policy updates per generation batch (GRPO's mu)
    batch_size: int = 16               # rollouts per device per step (a multiple of num_generations)
    max_steps: int = 40
    learning_rate: float = 5e-4
    beta: float = 1e-4                 # KL coefficient (k3 estimator, as the reference)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.3
    loss_type: str = "dapo"            # token mean over the whole batch
    temperature: float = 1.0
    max_completion_length: int = 96
    reward_preset: str = "paper"       # weights of accuracy / IoU / format (see qoqmed.rewards.WEIGHTS)
    iou_reduce: str = "max"
    seed: int = 0
    logging_steps: int = 10
    save_steps: int | None = None

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r}; choose one of {ESTIMATORS}")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of num_generations="
                             f"{self.num_generations}")


# ---------------------------------------------------------------------------------------------------------------
# Data: records -> a datasets.Dataset TRL can sample prompts from; grounding facts stay in Python by row id.

@dataclass(frozen=True)
class _RowFacts:
    answer: str
    grounding: Grounding
    ecg_paths: tuple[str, ...]


def build_rl_dataset(records: Sequence[Record], processor: QoQMedProcessor,
                     system: str | None = SYSTEM_PROMPT) -> tuple[Dataset, dict[str, _RowFacts]]:
    """One row per record: chat prompt with images, id, domain; plus the facts rewards need, keyed by id."""
    rows, facts = [], {}
    for rec in records:
        loaded = load_record(rec)
        msgs = messages_for(loaded, system)
        for m in msgs:  # images travel in the `images` column; TRL puts them back into the placeholders
            m["content"] = [{k: v for k, v in part.items() if k != "image"} for part in m["content"]]
        rows.append({"prompt": msgs, "images": loaded.images, "id": rec.id, "domain": rec.domain})
        facts[rec.id] = _RowFacts(rec.answer, grounding(loaded, processor),
                                  tuple(str(rec.resolve(p)) for p in rec.ecg))
    if len(set(r["id"] for r in rows)) != len(rows):
        raise ValueError("record ids must be unique within a training set")
    return Dataset.from_list(rows), facts


@lru_cache(maxsize=4096)
def _cached_mask(path: str) -> np.ndarray:
    return load_mask(path)


def make_reward_function(facts: dict[str, _RowFacts], preset: str = "paper", iou_reduce: str = "max"):
    """A TRL reward function scoring each completion against its row's answer, boxes and mask."""

    def qoqmed_reward(completions, id, **_) -> list[float]:  # noqa: A002 - TRL passes dataset columns by name
        out = []
        for completion, row_id in zip(completions, id, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            f = facts[row_id]
            g = f.grounding
            mask = _cached_mask(g.mask_path) if g.mask_path else None
            s = score(text, f.answer, gt_boxes=list(g.boxes) or None, gt_mask=mask, image_size=g.image_size,
                      model_size=g.model_size, weights=preset, iou_reduce=iou_reduce)
            out.append(s["overall"])
        return out

    return qoqmed_reward


# ---------------------------------------------------------------------------------------------------------------
# Trainer

class QoQMedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + ECG inputs + pluggable advantage estimator computed on the gathered global batch."""

    def __init__(self, *args, settings: RLSettings, facts: dict[str, _RowFacts], **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.facts = facts
        self.estimator = (DRPO(settings.num_generations, mode=settings.drpo_mode, history=settings.drpo_history,
                               kl_quantile=settings.drpo_kl_quantile, seed=settings.seed)
                          if settings.estimator == "drpo" else None)
        self._active_ecg: torch.Tensor | None = None
        self.domain_history: list[dict] = []
        for model in (self.model, self.ref_model):
            if model is not None:
                backbone = self.accelerator.unwrap_model(model).model
                backbone.register_forward_pre_hook(self._inject_ecg, with_kwargs=True)

    # -- ECG side channel ----------------------------------------------------------------------------------
    def _inject_ecg(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if self._active_ecg is None or kwargs.get("ecg_values") is not None or ids is None:
            return None
        if not (ids == module.config.ecg_token_id).any():
            return None
        kwargs["ecg_values"] = self._active_ecg.to(ids.device)
        return args, kwargs

    def _ecg_rows(self, inputs) -> list[torch.Tensor]:
        """Per row, its ECG records stacked (n_i, leads, samples); rows without ECG get an empty (0, ...) tensor."""
        shape = (self.processing_class.ecg_num_leads, self.processing_class.ecg_num_samples)
        out = []
        for x in inputs:
            paths = self.facts[x["id"]].ecg_paths
            out.append(torch.stack([_load_ecg_tensor(p) for p in paths]) if paths else torch.empty(0, *shape))
        return out

    @staticmethod
    def _concat(rows: list[torch.Tensor]) -> torch.Tensor | None:
        rows = [r for r in rows if r.shape[0]]
        return torch.cat(rows) if rows else None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, **kwargs):
        if self._active_ecg is not None:
            batch_size = None  # keep every row in one call so ECG records line up with their placeholders
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                          batch_size=batch_size, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._active_ecg = self._concat(inputs["ecg_rows"])
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._active_ecg = None

    # -- rewards and advantages ----------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered = (rewards_per_func, gather_object([(x["id"], x["domain"]) for x in inputs]))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        ecg_rows = self._ecg_rows(inputs)
        self._active_ecg = self._concat(ecg_rows)
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._active_ecg = None
        out["ecg_rows"] = ecg_rows  # a per-row list, shuffled and split with the batch
        mode = "train" if self.model.training else "eval"
        rewards_per_func, meta = self._gathered
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1).cpu()
        ids = [m[0] for m in meta]
        domains = [m[1] for m in meta]
        # TRL lays rollouts of one prompt out as consecutive blocks of num_generations rows
        groups = [f"{i}@{n // self.num_generations}" for n, i in enumerate(ids)]
        advantages = self._advantages(rewards, groups, domains, self._rollout_kl(out)) if mode == "train" else None
        if advantages is not None:
            n = len(inputs)
            local = advantages[self.accelerator.process_index * n:(self.accelerator.process_index + 1) * n]
            out["advantages"] = local.to(out["advantages"].device, out["advantages"].dtype)
        self._log_domains(mode, rewards, domains)
        return out

    def _rollout_kl(self, out: dict) -> torch.Tensor | None:
        """Per-rollout k3 KL(policy at sampling time || reference), mean over completion tokens, all processes.

        Needs the sampling-time log-probs, which TRL computes only when a generation batch is reused
        (``num_iterations > 1`` or several steps per generation); otherwise DRPO runs without KL damping.
        """
        old, ref = out.get("old_per_token_logps"), out.get("ref_per_token_logps")
        if old is None or ref is None:
            return None
        mask = out["completion_mask"].float()
        k3 = torch.exp(ref - old) - (ref - old) - 1
        kl = (k3 * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.accelerator.gather(kl.detach()).cpu()

    def _advantages(self, rewards: torch.Tensor, groups: list[str], domains: list[str],
                    kl: torch.Tensor | None = None) -> torch.Tensor:
        est = self.settings.estimator
        if est == "grpo":
            return group_advantages(rewards, groups, scale=True)
        if est == "drgrpo":
            return group_advantages(rewards, groups, scale=False)
        return self.estimator(rewards, groups, domains, kl=kl)

    def _log_domains(self, mode: str, rewards: torch.Tensor, domains: list[str]) -> None:
        by_domain = defaultdict(list)
        for r, d in zip(rewards.tolist(), domains):
            by_domain[d].append(r)
        entry = {"step": self.state.global_step}
        for d, vals in sorted(by_domain.items()):
            self._metrics[mode][f"domain_reward/{d}"].append(float(np.mean(vals)))
            entry[f"reward/{d}"] = float(np.mean(vals))
            stats = self.estimator.last_stats.get(d) if self.estimator is not None and mode == "train" else None
            if stats:
                for key in ("mean_abs_scale", "T_g", "k"):
                    if key in stats and stats[key] is not None:
                        entry[f"{key}/{d}"] = float(stats[key])
        if mode == "train":
            self.domain_history.append(entry)

    # -- checkpoints carry the estimator state ------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.estimator is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            torch.save(self.estimator.state_dict(), folder / DRPO_STATE_FILE)

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        path = Path(checkpoint) / DRPO_STATE_FILE if checkpoint else None
        if self.estimator is not None and path is not None and path.exists():
            self.estimator.load_state_dict(torch.load(path, weights_only=False))


@lru_cache(maxsize=4096)
def _load_ecg_tensor(path: str) -> torch.Tensor:
    return torch.from_numpy(load_ecg(path))


def train_rl(model_dir: str | Path, records: Sequence[Record], out_dir: str | Path,
             settings: RLSettings | None = None, resume_from: str | None = None) -> dict:
    """Train the model saved in ``model_dir`` with RL on ``records``; save it to ``out_dir``; return the logs."""
    from ..modeling import QoQMedForConditionalGeneration

    s = settings or RLSettings()
    out_dir = Path(out_dir)
    processor = QoQMedProcessor.from_pretrained(str(model_dir))
    model = QoQMedForConditionalGeneration.from_pretrained(str(model_dir))
    dataset, facts = build_rl_dataset(records, processor)
    args = GRPOConfig(
        output_dir=str(out_dir), max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
        num_generations=s.num_generations, num_iterations=s.num_iterations, learning_rate=s.learning_rate,
        beta=s.beta, epsilon=s.epsilon_low,
        epsilon_high=s.epsilon_high, loss_type=s.loss_type, temperature=s.temperature,
        max_completion_length=s.max_completion_length, logging_steps=s.logging_steps, report_to=[],
        save_strategy="steps" if s.save_steps else "no", save_steps=s.save_steps or 500, seed=s.seed,
        data_seed=s.seed, use_cpu=not torch.cuda.is_available(), bf16=False, dataloader_num_workers=0,
        generation_kwargs={"suppress_tokens": model.placeholder_token_ids()},
        lr_scheduler_type="constant_with_warmup", warmup_steps=2, gradient_checkpointing=False,
    )
    trainer = QoQMedGRPOTrainer(
        model=model, reward_funcs=make_reward_function(facts, s.reward_preset, s.iou_reduce), args=args,
        train_dataset=dataset, processing_class=processor, settings=s, facts=facts,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(str(out_dir / "model"))
    processor.save_pretrained(str(out_dir / "model"))
    logs = {"settings": asdict(s), "log_history": trainer.state.log_history, "domains": trainer.domain_history}
    if trainer.estimator is not None:
        torch.save(trainer.estimator.state_dict(), out_dir / "model" / DRPO_STATE_FILE)
    (out_dir / "rl_logs.json").write_text(json.dumps(logs, indent=1, default=str))
    return logs
