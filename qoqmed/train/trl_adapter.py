"""The one class that reaches into TRL's GRPOTrainer (written against TRL 1.16).

TRL keeps the rollouts' rewards, advantages and log-probs inside private methods of ``GRPOTrainer``. Every override
of those methods, every key of TRL's rollout batch read here and the hand-over of scored rollouts from the reward
pass to the advantage step live in :class:`GRPOTrainerAdapter`; the trainer built on it
(``qoqmed.train.rl.QoQMedRLTrainer``) fills in plain hooks and never touches TRL's internals:

- :meth:`~GRPOTrainerAdapter.rollout_ecg`: the ECG records of each row (TRL forwards only model inputs it knows;
  with ``use_vllm`` they also reach the sampler, see ``qoqmed.train.vllm_rollouts``);
- :meth:`~GRPOTrainerAdapter.rollout_advantages`: one advantage per rollout of the batch gathered from every process;
- :meth:`~GRPOTrainerAdapter.record_rollouts`: per-rollout logging of a training or evaluation batch;
- :meth:`~GRPOTrainerAdapter.evaluation_started` / :meth:`~GRPOTrainerAdapter.evaluation_finished`;
- :meth:`~GRPOTrainerAdapter.save_extra_state` / :meth:`~GRPOTrainerAdapter.load_extra_state`: state that travels
  with checkpoints.

``tests/test_train.py`` pins the signatures of the overridden TRL methods, so an upgrade that changes them fails
there first.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object, is_peft_model
from trl import GRPOTrainer

from ..modeling.processing_qoqmed import ECG_START
from .sharding import ShardedTrainerMixin
from .vllm_rollouts import attach_vllm, engine_dtype


@dataclass
class ScoredRollouts:
    """One reward pass over the rollouts of every process: the reward and the facts each advantage estimator and
    the per-domain logs need, in TRL's row order (the rollouts of one prompt are consecutive blocks of
    ``num_generations`` rows)."""

    rewards: torch.Tensor          # (rollouts,) float32 on the CPU; NaN where the reward function returned None
    ids: list[str]                 # record id per rollout
    domains: list[str]             # domain per rollout (logging)
    accuracy: list[float | None]   # accuracy component per rollout (logging)
    groups: list[str]              # what DRPO / DISCO group by (settings.domain_key)
    num_generations: int

    def question_ids(self) -> list[str]:
        """One id per question asked: the row id and its block, since a prompt may be drawn more than once."""
        return [f"{row_id}@{n // self.num_generations}" for n, row_id in enumerate(self.ids)]

    def select(self, keep: torch.Tensor) -> ScoredRollouts:
        """The rollouts where the boolean mask ``keep`` is true."""
        rows = keep.nonzero(as_tuple=True)[0].tolist()
        return ScoredRollouts(self.rewards[keep], [self.ids[i] for i in rows], [self.domains[i] for i in rows],
                              [self.accuracy[i] for i in rows], [self.groups[i] for i in rows],
                              self.num_generations)


def advantages_of_scorable(scored: ScoredRollouts, kl: torch.Tensor | None,
                           estimate: Callable[[ScoredRollouts, torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
    """``estimate``'s advantages for the questions whose every rollout was scored; 0 for the others.

    TRL gives a rollout that no reward function scored (reward None, NaN here) advantage 0 and keeps it out of its
    question's baseline. The estimators here need whole groups, so such a question is left out of the estimate
    altogether and all its rollouts get 0: no rollout is pushed by a reward it never received.
    """
    unscored = torch.isnan(scored.rewards)
    if not unscored.any():
        return estimate(scored, kl)
    keep = ~unscored.view(-1, scored.num_generations).any(dim=1).repeat_interleave(scored.num_generations)
    advantages = torch.zeros_like(scored.rewards)
    if keep.any():
        advantages[keep] = estimate(scored.select(keep), None if kl is None else kl[keep]).to(advantages.dtype)
    return advantages


class GRPOTrainerAdapter(ShardedTrainerMixin, GRPOTrainer):
    """GRPOTrainer with ECG inputs, the advantage step and checkpoint state handed to plain hooks; FSDP on CPU
    processes and the gathered final save come from :class:`~qoqmed.train.sharding.ShardedTrainerMixin`."""

    def __init__(self, model, reward_funcs, args, **kwargs):
        colocated = args.use_vllm and args.vllm_mode == "colocate"
        # the sampler computes in the training pass's precision (mixed precision: its half type)
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else model.dtype
        with engine_dtype(dtype) if colocated else nullcontext():
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        # TRL sums the weighted reward columns with nansum and sets rows every function left unscored back to NaN;
        # with one function of weight 1 that sum is the function's column, NaN where it returned None
        if len(self.reward_funcs) != 1:
            raise ValueError(f"the trainer takes one reward function (the QoQ-Med reward weighs its components "
                             f"itself), got {len(self.reward_funcs)}")
        if not torch.all(self.reward_weights == 1):
            raise ValueError(f"reward_weights must be [1.0] (the reward function weighs its components itself), "
                             f"got {self.reward_weights.tolist()}")
        self._active_ecg: torch.Tensor | None = None
        self._active_ecg_rows: list[torch.Tensor] | None = None  # per row, while its rollouts are generated
        self._scored: ScoredRollouts | None = None  # set by each reward pass, taken once by the step that asked
        # TRL left-pads prompt ids itself but takes mm_token_type_ids from the processor: both must pad left, or
        # every shorter image row is scored with shifted image flags and rotary positions (see _check_alignment)
        self.processing_class.padding_side = "left"
        self.processing_class.tokenizer.padding_side = "left"
        for model in (self.model, self.ref_model):
            if model is not None:
                model = self.accelerator.unwrap_model(model)
                if is_peft_model(model):  # LoRA: the QoQ-Med model sits under peft's wrappers
                    model = model.get_base_model()
                model.model.register_forward_pre_hook(self._inject_ecg, with_kwargs=True)
        if self.use_vllm:
            proc = self.processing_class
            attach_vllm(self.vllm_generation, lambda: self._active_ecg_rows,
                        proc.tokenizer.convert_tokens_to_ids(ECG_START), proc.ecg_token_id,
                        frozenset({proc.image_token_id, proc.ecg_token_id}))

    # -- hooks for the trainer built on this class -------------------------------------------------------------
    def rollout_ecg(self, inputs: list[dict]) -> list[torch.Tensor]:
        """Per row of ``inputs``, its ECG records stacked (n_i, leads, samples); (0, ...) for rows without ECG."""
        raise NotImplementedError

    def wants_rollout_kl(self) -> bool:
        """Whether :meth:`rollout_advantages` uses the per-rollout KL to the reference model."""
        return False

    def rollout_advantages(self, scored: ScoredRollouts, kl: torch.Tensor | None) -> torch.Tensor:
        """One advantage per rollout of ``scored`` (every process's rollouts, all scored)."""
        raise NotImplementedError

    def record_rollouts(self, mode: str, scored: ScoredRollouts, advantages: torch.Tensor | None) -> None:
        """Log one batch (``mode`` "train" or "eval"); ``advantages`` only in training."""

    def evaluation_started(self, split: str) -> None:
        """Called before the rollouts of one evaluation set (``split``: "eval", "probe", ...)."""

    def evaluation_finished(self, split: str) -> None:
        """Called after the rollouts of one evaluation set."""

    def evaluation_seed(self) -> int:
        """The seed every evaluation draws its samples from."""
        return self.args.seed + 7919

    def save_extra_state(self, folder: Path) -> None:
        """Write what a checkpoint in ``folder`` must carry beyond TRL's own state."""

    def load_extra_state(self, folder: Path) -> None:
        """Restore what :meth:`save_extra_state` wrote into ``folder``."""

    def log_metric(self, mode: str, key: str, value: float) -> None:
        """A value TRL averages over ``logging_steps`` and hands to ``report_to``."""
        self._metrics[mode][key].append(value)

    # -- ECG side channel: a forward pre-hook hands the records to every call whose ids hold ECG placeholders -------
    def _inject_ecg(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if self._active_ecg is None or kwargs.get("ecg_values") is not None or ids is None:
            return None
        if not (ids == module.config.ecg_token_id).any():
            return None
        kwargs["ecg_values"] = self._active_ecg.to(ids.device)
        return args, kwargs

    @staticmethod
    def _concat(rows: list[torch.Tensor]) -> torch.Tensor | None:
        rows = [r for r in rows if r.shape[0]]
        return torch.cat(rows) if rows else None

    def _check_alignment(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor | None) -> None:
        """Image-token flags must sit exactly on the image placeholders of the ids they come with."""
        if mm_token_type_ids is None:
            return
        flags = mm_token_type_ids[:, : input_ids.shape[1]] == 1
        if not torch.equal(flags, input_ids == self.processing_class.image_token_id):
            raise RuntimeError("mm_token_type_ids do not line up with the image tokens of input_ids: the processor "
                               "and the trainer pad on different sides; the loss would score other inputs than the "
                               "rollouts were sampled with")

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, **kwargs):
        self._check_alignment(input_ids, kwargs.get("mm_token_type_ids"))
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

    # -- rewards and advantages ------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's reward pass (gathered from every process), recorded with each rollout's id, domain, accuracy and
        group as a :class:`ScoredRollouts` for :meth:`_generate_and_score_completions` to take."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        parts = getattr(self.reward_funcs[0], "last_components", None) or [{}] * len(inputs)
        if len(parts) != len(inputs):
            parts = [{}] * len(inputs)
        local = [(x["id"], x["domain"], p.get("accuracy"), x["group"]) for x, p in zip(inputs, parts)]
        ids, domains, accuracy, groups = (list(column) for column in zip(*gather_object(local)))
        mode = "train" if self.model.training else "eval"
        generations = self.num_generations if mode == "train" else self.num_generations_eval
        self._scored = ScoredRollouts(rewards_per_func[:, 0].cpu(), ids, domains, accuracy, groups, generations)
        return rewards_per_func

    def _take_scored(self) -> ScoredRollouts:
        scored, self._scored = self._scored, None
        if scored is None:
            raise RuntimeError("TRL generated completions without calling _calculate_rewards; this TRL version "
                               "does not match the trainer")
        return scored

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        ecg_rows = self.rollout_ecg(inputs)
        self._active_ecg, self._active_ecg_rows = self._concat(ecg_rows), ecg_rows
        try:
            out = super()._generate_and_score_completions(inputs)
            kl = self._rollout_kl(out) if mode == "train" and self.wants_rollout_kl() else None
        finally:
            self._active_ecg, self._active_ecg_rows = None, None
        out["ecg_rows"] = ecg_rows  # a per-row list, shuffled and split with the batch
        scored = self._take_scored()
        advantages = None
        if mode == "train":
            advantages = advantages_of_scorable(scored, kl, self.rollout_advantages)
            n = len(inputs)
            local = advantages[self.accelerator.process_index * n:(self.accelerator.process_index + 1) * n]
            out["advantages"] = local.to(out["advantages"].device, out["advantages"].dtype)
        self.record_rollouts(mode, scored, advantages)
        return out

    def _rollout_kl(self, out: dict) -> torch.Tensor | None:
        """Per-rollout k3 KL(policy at sampling time || reference), mean over completion tokens, all processes.

        DRPO's KL damping (paper Eqs. 4-5) needs it. TRL computes the sampling-time log-probs only when a
        generation batch is reused, so they are computed here otherwise (one more no-grad forward per batch).
        Without a reference model (``beta = 0``) there is no KL.
        """
        ref = out.get("ref_per_token_logps")
        if ref is None:
            return None
        old = out.get("old_per_token_logps")
        if old is None:
            old = self._sampling_logps(out)
        mask = out["completion_mask"].float()
        k3 = torch.exp(ref - old) - (ref - old) - 1
        kl = (k3 * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.accelerator.gather(kl.detach()).cpu()

    @torch.no_grad()
    def _sampling_logps(self, out: dict) -> torch.Tensor:
        """Per-token log-probs of the sampled completions under the current (sampling) policy."""
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        extra = {k: out[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids", "num_images") if k in out}
        logps, _, _ = self._get_per_token_logps_and_entropies(self.model, ids, mask, out["completion_ids"].size(1),
                                                              **extra)
        return logps

    # -- evaluation with fixed draws ---------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """TRL's evaluation (sampled like RL), with fixed draws that leave the training RNG untouched.

        Each evaluation of a set draws the same random numbers, so a curve moves with the model and not with the
        dice, and a run with evaluations trains exactly like one without.
        """
        if eval_dataset is None and isinstance(self.eval_dataset, dict):
            # several eval sets: the base class calls back here once per set, and only those calls log, so no set
            # is logged twice
            return super().evaluate(None, ignore_keys, metric_key_prefix)
        split = metric_key_prefix.removeprefix("eval_") if metric_key_prefix != "eval" else "eval"
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self.evaluation_started(split)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.evaluation_seed())
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        self.evaluation_finished(split)
        return metrics

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            self.save_extra_state(Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # save_pretrained writes Qwen2.5-VL's original key names (transformers' checkpoint conversion) and only
        # from_pretrained maps them back; the stock loader would leave most weights at their start values.
        # DeepSpeed and FSDP checkpoints are sharded engine states and LoRA checkpoints hold adapters only, which
        # the stock loader handles.
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or is_peft_model(self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        dtype = next(target.parameters()).dtype
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=dtype)
        target.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if checkpoint:
            self.load_extra_state(Path(checkpoint))
