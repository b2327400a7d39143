"""RL with verifiable rewards for every estimator (GRPO, Dr.GRPO, RLOO, DISCO, DRPO) on TRL's GRPOTrainer.

The supervised warm start is in ``qoqmed.train.sft``; the settings are in ``qoqmed.train.settings``.

What the RL trainer adds to the stock one (the TRL side of each point, every override of GRPOTrainer's private
methods, is in ``qoqmed.train.trl_adapter``; :class:`QoQMedRLTrainer` fills in its hooks):

1. ECG records ride along with each row. TRL's generation and log-prob passes only forward the keyword arguments
   it knows, so a forward pre-hook on the backbone hands ``ecg_values`` to any call whose ``input_ids`` hold ECG
   placeholders. Rows of a call are whole generation batches (internal chunking is switched off while ECG rows are
   present) so the records line up with the placeholders in order.
2. Advantages come from ``qoqmed.algos`` (GRPO, Dr.GRPO, RLOO, DISCO-style, DRPO) and are computed on the rewards
   gathered from every process, with the rows' ids and domains gathered the same way, so all processes agree;
   each keeps its own slice.
3. Per-domain reward, accuracy and DRPO statistics are logged (``domain_history``, a CSV, and whatever
   ``report_to`` names: TensorBoard, W&B); the DRPO state is saved with every checkpoint and restored on resume.

Loss options map onto TRL's GRPO loss: ``epsilon_low``/``epsilon_high`` clip the ratio, ``dual_clip`` caps the
ratio for negative advantages (TRL's ``delta``: for A < 0 the loss is ``|A| * max(min(r, c), clip(r))``, which is
dual-clip PPO's ``-max(min(rA, clip(r)A), cA)``; for A > 0 it changes nothing while c >= 1 + epsilon_high),
``loss_type`` ``token_mean`` (TRL ``dapo``: mean over all response tokens, as the reference) or
``sequence_mean`` (TRL ``grpo``: mean per sequence, then over sequences), and ``beta`` times TRL's k3 KL.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig

from ..algos.grpo import disco_advantages, group_advantages, rloo_advantages
from ..data.prompts import STYLE_SYSTEM, Grounding, grounding, load_record, messages_for
from ..data.readers import load_ecg_file, load_mask_cached
from ..data.schema import Record
from ..modeling import QoQMedForConditionalGeneration, QoQMedProcessor, freeze
from ..modeling.lora import merge_adapter
from ..rewards.scores import score_batch
from .drpo_state import DRPO_STATE_FILE, LEGACY_DRPO_STATE_FILE, read_drpo_state, write_drpo_state
from .settings import LOSS_TYPES, LoRASettings, RLSettings, RolloutSettings, make_estimator
from .trl_adapter import GRPOTrainerAdapter, ScoredRollouts

METRICS_CSV = "rl_metrics.csv"


# ---------------------------------------------------------------------------------------------------------------
# Data: records -> a datasets.Dataset TRL can sample prompts from; grounding facts stay in Python by row id.

@dataclass(frozen=True)
class _RowFacts:
    answer: str
    grounding: Grounding
    ecg_paths: tuple[str, ...]
    ecg_formats: tuple = ()  # per ECG: its qoqmed.data.schema.ECGFormat (rate, leads) or None


def group_of(record: Record, key: str = "domain") -> str:
    """The value DRPO and DISCO group ``record`` by: a record field (``domain``, ``dataset``, ...) or an extra field.

    The released code groups by dataset (about 30 groups on CLIMB), the paper speaks of the 9 clinical domains.
    ``answer`` groups by the ground-truth label set, so DRPO's rarity and difficulty terms act on labels.
    """
    if key in ("domain", "dataset", "split", "difficulty", "answer"):
        value = getattr(record, key)
    else:
        value = record.extra.get(key)
    if value is None or isinstance(value, (dict, list)):
        raise ValueError(f"record {record.id!r}: rl.domain_key={key!r} names no scalar field of this record "
                         "(use domain, dataset, or a field present in every row)")
    return str(value)


def build_rl_dataset(records: Sequence[Record], processor: QoQMedProcessor,
                     system: str | None = STYLE_SYSTEM, domain_key: str = "domain",
                     prompt_style: str = "qoqmed") -> tuple[Dataset, dict[str, _RowFacts]]:
    """One row per record: chat prompt with images, id, domain, DRPO group; plus the facts rewards need, by id.
    ``system`` defaults to the system prompt of ``prompt_style`` (``qoqmed.data.prompt_styles``)."""
    rows, facts = [], {}
    for rec in records:
        loaded = load_record(rec, prompt_style)
        msgs = messages_for(loaded, system)
        for m in msgs:  # images travel in the `images` column; TRL puts them back into the placeholders
            m["content"] = [{k: v for k, v in part.items() if k != "image"} for part in m["content"]]
        rows.append({"prompt": msgs, "images": loaded.images, "id": rec.id, "domain": rec.domain,
                     "group": group_of(rec, domain_key)})
        facts[rec.id] = _RowFacts(rec.answer, grounding(loaded, processor),
                                  tuple(str(rec.resolve(p)) for p in rec.ecg),
                                  tuple(rec.ecg_formats.get(i) for i in range(len(rec.ecg))))
    if len(set(r["id"] for r in rows)) != len(rows):
        raise ValueError("record ids must be unique within a training set")
    return Dataset.from_list(rows), facts


def make_reward_function(facts: dict[str, _RowFacts], preset: str = "paper", iou_reduce: str | None = None,
                         boxes_required: bool | None = None):
    """A TRL reward function scoring each completion against its row's answer, boxes and mask.

    The components of the last call (accuracy, iou, format per completion) are kept on the function as
    ``last_components`` so the trainer can log per-domain accuracy.
    """

    def qoqmed_reward(completions, id, **_) -> list[float]:  # noqa: A002 - TRL passes dataset columns by name
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        rows = [facts[row_id] for row_id in id]
        ground = [f.grounding for f in rows]
        # one mask object per question (cached by path), so score_batch prepares it once for all its rollouts
        scores = score_batch(
            texts, [f.answer for f in rows], [load_mask_cached(g.mask_path) if g.mask_path else None for g in ground],
            [list(g.boxes) or None for g in ground], preset, image_sizes=[g.image_size for g in ground],
            model_sizes=[g.model_size for g in ground], iou_reduce=iou_reduce, boxes_required=boxes_required)
        qoqmed_reward.last_components = [{k: s.get(k) for k in ("accuracy", "iou", "format")} for s in scores]
        return [s["overall"] for s in scores]

    qoqmed_reward.last_components = []
    return qoqmed_reward


# ---------------------------------------------------------------------------------------------------------------
# Trainer: what qoqmed adds to the stock one, on the hooks of GRPOTrainerAdapter (the only code that knows TRL's
# internals)

class QoQMedRLTrainer(GRPOTrainerAdapter):
    """RL with any estimator: ECG records per row, advantages from ``qoqmed.algos`` on the batch gathered from every
    process, per-domain logs, and the DRPO state in every checkpoint."""

    def __init__(self, *args, settings: RLSettings, facts: dict[str, _RowFacts],
                 domain_counts: dict[str, int] | None = None, metrics_csv: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.facts = facts
        self.domain_counts = domain_counts  # DISCO's domain prevalence (training set); None: batch counts
        self.estimator = make_estimator(settings)
        self.metrics_csv = Path(metrics_csv) if metrics_csv else None
        self.domain_history: list[dict] = []
        self.eval_history: list[dict] = []
        self._eval_buffer: dict[str, list] = {"rewards": [], "domains": [], "accuracy": []}

    def rollout_ecg(self, inputs) -> list[torch.Tensor]:
        shape = (self.processing_class.ecg_num_leads, self.processing_class.ecg_num_samples)
        out = []
        for x in inputs:
            fact = self.facts[x["id"]]
            formats = fact.ecg_formats or (None,) * len(fact.ecg_paths)
            out.append(torch.stack([_load_ecg_tensor(p, f) for p, f in zip(fact.ecg_paths, formats, strict=True)])
                       if fact.ecg_paths else torch.empty(0, *shape))
        return out

    # -- advantages ------------------------------------------------------------------------------------------
    def wants_rollout_kl(self) -> bool:
        # DRPO's KL damping; without a reference model (beta = 0) TRL has no KL and DRPO runs undamped
        return self.estimator is not None and self.estimator.kl_quantile is not None

    def rollout_advantages(self, scored: ScoredRollouts, kl: torch.Tensor | None) -> torch.Tensor:
        return self.estimate_advantages(scored.rewards, scored.question_ids(), scored.groups, kl)

    def estimate_advantages(self, rewards: torch.Tensor, questions: list[str], domains: list[str],
                            kl: torch.Tensor | None = None) -> torch.Tensor:
        """One advantage per rollout of the gathered batch, from the configured estimator."""
        est = self.settings.estimator
        if est == "grpo":
            return group_advantages(rewards, questions, scale=True)
        if est == "drgrpo":
            return group_advantages(rewards, questions, scale=False)
        if est == "rloo":
            return rloo_advantages(rewards, questions)
        if est == "disco":
            return disco_advantages(rewards, questions, domains, domain_counts=self.domain_counts,
                                    tau=self.settings.disco_tau)
        return self.estimator(rewards, questions, domains, kl=kl)

    # -- per-domain logs -------------------------------------------------------------------------------------
    def record_rollouts(self, mode: str, scored: ScoredRollouts, advantages: torch.Tensor | None) -> None:
        """Per-domain metrics of one batch. A training step is logged at once; an evaluation (the probe set, or
        eval records) is gathered over its batches and logged once by :meth:`evaluation_finished`."""
        rewards, domains, accuracy = scored.rewards.tolist(), scored.domains, scored.accuracy
        entry = self._domain_entry(rewards, domains, accuracy, advantages, mode == "train")
        for key, value in entry.items():
            self.log_metric(mode, f"domain/{key}", value)
        if mode == "train":
            entry = {"step": self.state.global_step, **entry}
            self.domain_history.append(entry)
            self._append_csv("train", entry)
        else:
            buf = self._eval_buffer
            buf["rewards"] += rewards
            buf["domains"] += list(domains)
            buf["accuracy"] += list(accuracy)

    def evaluation_started(self, split: str) -> None:
        self._eval_buffer = {"rewards": [], "domains": [], "accuracy": []}

    def evaluation_finished(self, split: str) -> None:
        buf = self._eval_buffer
        if buf["rewards"]:
            entry = {"step": self.state.global_step, "split": split,
                     **self._domain_entry(buf["rewards"], buf["domains"], buf["accuracy"], None, train=False)}
            self.eval_history.append(entry)
            self._append_csv(split, entry)

    def evaluation_seed(self) -> int:
        # each evaluation of the probe set draws the same numbers, so its curve moves with the model alone
        return self.settings.seed + 7919

    def _domain_entry(self, r: list[float], domains: list[str], accuracy: list, advantages: torch.Tensor | None,
                      train: bool) -> dict:
        by_domain: dict[str, list[int]] = defaultdict(list)
        for i, d in enumerate(domains):
            by_domain[d].append(i)
        g = self.num_generations
        entry: dict = {}
        stats_all = self.estimator.last_stats if self.estimator is not None and train else {}
        for d, rows in sorted(by_domain.items()):
            scored = [r[i] for i in rows if not np.isnan(r[i])]  # as TRL, unscored rollouts stay out of the mean
            if scored:
                entry[f"reward/{d}"] = float(np.mean(scored))
            acc = [accuracy[i] for i in rows if accuracy[i] is not None]
            if acc:
                entry[f"accuracy/{d}"] = float(np.mean(acc))
            # rollouts of one question are consecutive blocks of num_generations rows; a group whose rollouts
            # all score the same accuracy gives group-relative estimators no signal on it
            blocks = [accuracy[i:i + g] for i in rows if i % g == 0]
            if blocks and all(a is not None for b in blocks for a in b):
                entry[f"pass@{g}/{d}"] = float(np.mean([max(b) >= 1.0 for b in blocks]))
                entry[f"constant_accuracy/{d}"] = float(np.mean([len(set(b)) == 1 for b in blocks]))
            entry[f"rollouts/{d}"] = len(rows)
            if advantages is not None:
                entry[f"mean_abs_advantage/{d}"] = float(advantages[rows].abs().mean())
            stats = stats_all.get(d)
            if stats:
                for key in ("mean_abs_scale", "T_g", "k", "mu_g", "n_history", "N_g", "kl_damping"):
                    if stats.get(key) is not None:
                        entry[f"{key}/{d}"] = float(stats[key])
        return entry

    def _append_csv(self, mode: str, entry: dict) -> None:
        """Long format (step, split, domain, metric, value): domains may appear late, columns never change."""
        if self.metrics_csv is None or not self.accelerator.is_main_process:
            return
        new = not self.metrics_csv.exists()
        self.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "split", "domain", "metric", "value"])
            for key, value in entry.items():
                if key not in ("step", "split"):
                    metric, domain = key.split("/", 1)
                    w.writerow([entry["step"], mode, domain, metric, value])

    # -- checkpoints carry the estimator state -----------------------------------------------------------------
    def save_extra_state(self, folder: Path) -> None:
        if self.estimator is not None:
            write_drpo_state(self.estimator.state_dict(), folder / DRPO_STATE_FILE)

    def load_extra_state(self, folder: Path) -> None:
        if self.estimator is None:
            return
        path = folder / DRPO_STATE_FILE
        if not path.exists() and (folder / LEGACY_DRPO_STATE_FILE).exists():
            path = folder / LEGACY_DRPO_STATE_FILE  # written by an earlier version; read without pickle
        if not path.exists():
            raise FileNotFoundError(f"{path}: the checkpoint has no DRPO state; resuming without it would "
                                    "change the advantages (was it written by another estimator?)")
        self.estimator.load_state_dict(read_drpo_state(path))


@lru_cache(maxsize=4096)
def _load_ecg_tensor(path: str, fmt=None) -> torch.Tensor:
    return torch.from_numpy(load_ecg_file(path, fmt))


def _resolve_resume(resume_from: str | None, out_dir: Path) -> str | None:
    if resume_from != "latest":
        return resume_from
    last = get_last_checkpoint(str(out_dir)) if out_dir.exists() else None
    return last  # None: nothing to resume, start fresh


def _reset_csv(path: Path, resume: str | None) -> None:
    """A fresh run starts a fresh CSV; a resumed one keeps the rows up to its checkpoint's step and appends."""
    if not path.exists():
        return
    if resume is None:
        path.unlink()
        return
    state = json.loads((Path(resume) / "trainer_state.json").read_text())
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= int(state["global_step"])]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def make_grpo_config(s: RLSettings, out_dir: str | Path, suppress_tokens: Sequence[int] = (),
                     evaluate: bool = False) -> GRPOConfig:
    """TRL's GRPOConfig for ``s``: loss options, batch geometry, logging, checkpointing, precision."""
    bf16 = torch.cuda.is_available() if s.bf16 is None else s.bf16
    return GRPOConfig(
        output_dir=str(out_dir), max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size, gradient_accumulation_steps=s.gradient_accumulation_steps,
        num_generations=s.num_generations, num_iterations=s.num_iterations, learning_rate=s.learning_rate,
        beta=s.beta, epsilon=s.epsilon_low, epsilon_high=s.epsilon_high, delta=s.dual_clip,
        loss_type=LOSS_TYPES[s.loss_type], temperature=s.temperature,
        max_completion_length=s.max_completion_length, logging_steps=s.logging_steps, report_to=list(s.report_to),
        save_strategy="steps" if s.save_steps else "no", save_steps=s.save_steps or 500,
        save_total_limit=s.save_total_limit, seed=s.seed, data_seed=s.seed,
        eval_strategy="steps" if evaluate else "no", eval_steps=s.eval_steps or s.probe_steps,
        eval_on_start=evaluate and s.probe_steps is not None,  # the probe curve starts at the warm start
        use_cpu=not torch.cuda.is_available(), bf16=bf16, dataloader_num_workers=0,
        generation_kwargs=_suppress(s.rollout.engine, suppress_tokens),
        lr_scheduler_type="constant_with_warmup", warmup_steps=2, gradient_checkpointing=s.gradient_checkpointing,
        disable_tqdm=not s.progress_bar, **_vllm_options(s.rollout),
        # TRL gathers the images of a batch for its completion logs only on processes whose rows hold images: a
        # process with an ECG- or text-only batch skips that collective and the processes deadlock
        log_multimodal=False,
    )


def _suppress(engine: str, tokens: Sequence[int]) -> dict | None:
    """Sampling options that keep ``tokens`` (the placeholders) out of rollouts, in the engine's own terms."""
    if not tokens:
        return None
    if engine == "vllm":  # vLLM's bias floor is -100: the same as never sampling them
        return {"logit_bias": {int(t): -100.0 for t in tokens}}
    return {"suppress_tokens": list(tokens)}


def _vllm_options(r: RolloutSettings) -> dict:
    """GRPOConfig's vLLM fields for ``rl.rollout``."""
    if r.engine != "vllm":
        return {"use_vllm": False}
    return dict(
        use_vllm=True, vllm_mode=r.vllm_mode, vllm_gpu_memory_utilization=r.gpu_memory_utilization,
        vllm_max_model_length=r.max_model_length, vllm_tensor_parallel_size=r.tensor_parallel_size,
        vllm_enable_sleep_mode=r.enable_sleep_mode, vllm_server_base_url=r.server_url,
        vllm_server_timeout=r.server_timeout,
        vllm_importance_sampling_correction=r.importance_sampling is not None,
        vllm_importance_sampling_mode=r.importance_sampling or "token_truncate",
        vllm_importance_sampling_clip_max=r.importance_sampling_clip_max,
        vllm_importance_sampling_clip_min=r.importance_sampling_clip_min,
    )


def probe_records(records: Sequence[Record], per_domain: int) -> list[Record]:
    """A fixed probe set: the first ``per_domain`` training records of each domain in id order (seed-independent)."""
    by_domain: dict[str, list[Record]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.id):
        if len(by_domain[rec.domain]) < per_domain:
            by_domain[rec.domain].append(rec)
    return [rec for domain in sorted(by_domain) for rec in by_domain[domain]]


def build_rl_trainer(model_dir: str | Path, records: Sequence[Record], out_dir: str | Path,
                     settings: RLSettings | None = None, eval_records: Sequence[Record] | None = None,
                     callbacks: list[TrainerCallback] | None = None,
                     lora: LoRASettings | None = None) -> QoQMedRLTrainer:
    """The RL trainer for the model saved in ``model_dir`` on ``records`` (what :func:`train_rl` runs).

    With ``lora`` TRL wraps the model in peft adapters (``peft_config``) and keeps no reference model: the KL
    reference is the same model with its adapters switched off, i.e. ``model_dir`` itself."""
    s = settings or RLSettings()
    out_dir = Path(out_dir)
    processor = QoQMedProcessor.from_pretrained(str(model_dir))
    dtype = getattr(torch, s.model_dtype) if s.model_dtype else None
    # an absolute path: adapters record it as their base model, to be found again from any working folder
    model = QoQMedForConditionalGeneration.from_pretrained(
        str(Path(model_dir).resolve()), dtype=dtype, quantization_config=lora.quantization_config() if lora else None)
    if lora and lora.quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=s.gradient_checkpointing)
    if s.freeze and not lora:  # under LoRA peft freezes the base; the lora section says what else trains
        freeze(model, **{part: True for part in s.freeze})
    dataset, facts = build_rl_dataset(records, processor, domain_key=s.domain_key,
                                      prompt_style=s.prompt_style)
    eval_sets: dict[str, Dataset] = {}
    if eval_records and s.eval_steps:
        eval_sets["eval"], eval_facts = build_rl_dataset(eval_records, processor, domain_key=s.domain_key,
                                                               prompt_style=s.prompt_style)
        overlap = set(facts) & set(eval_facts)
        if overlap:
            raise ValueError(f"eval records share ids with training records, e.g. {sorted(overlap)[:3]}")
        facts = {**facts, **eval_facts}
    if s.probe_steps:  # training questions: their facts are already in `facts`
        eval_sets["probe"], _ = build_rl_dataset(probe_records(records, s.probe_per_domain), processor,
                                                 domain_key=s.domain_key, prompt_style=s.prompt_style)
    args = make_grpo_config(s, out_dir, suppress_tokens=model.placeholder_token_ids(), evaluate=bool(eval_sets))
    domain_counts: dict[str, int] = defaultdict(int)
    for rec in records:
        domain_counts[group_of(rec, s.domain_key)] += 1
    eval_dataset = (eval_sets.get("eval") if list(eval_sets) == ["eval"] else eval_sets) or None
    return QoQMedRLTrainer(
        model=model, args=args,
        reward_funcs=make_reward_function(facts, s.reward_preset, s.iou_reduce, s.boxes_required),
        train_dataset=dataset, eval_dataset=eval_dataset, processing_class=processor, settings=s, facts=facts,
        domain_counts=dict(domain_counts), metrics_csv=out_dir / METRICS_CSV, callbacks=callbacks,
        peft_config=lora.peft_config() if lora else None,
    )


def train_rl(model_dir: str | Path, records: Sequence[Record], out_dir: str | Path,
             settings: RLSettings | None = None, resume_from: str | None = None,
             eval_records: Sequence[Record] | None = None, callbacks: list[TrainerCallback] | None = None,
             lora: LoRASettings | None = None) -> dict:
    """Train the model saved in ``model_dir`` with RL on ``records``; save it to ``out_dir``; return the logs.

    ``resume_from``: a checkpoint folder, or ``"latest"`` for the newest ``checkpoint-*`` in ``out_dir``.
    ``eval_records`` with ``settings.eval_steps``: periodic evaluation (generation + reward per domain).
    ``settings.probe_steps``: a fixed probe set of training questions scored every N steps, sampled as in RL
    (the learning curve of what RL optimises; split ``probe`` in the CSV).
    Per-step per-domain metrics go to ``out_dir/rl_metrics.csv``, everything to ``out_dir/rl_logs.json``.
    With ``lora``, ``out_dir/model`` is an adapter folder (``out_dir/merged`` the merged model if ``lora.merge``).
    """
    s = settings or RLSettings()
    out_dir = Path(out_dir)
    trainer = build_rl_trainer(model_dir, records, out_dir, s, eval_records, callbacks, lora)
    processor = trainer.processing_class
    resume = _resolve_resume(resume_from, out_dir)
    if trainer.accelerator.is_main_process:
        _reset_csv(out_dir / METRICS_CSV, resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out_dir / "model"))
    logs = {"settings": asdict(s), "log_history": trainer.state.log_history, "domains": trainer.domain_history,
            "eval_domains": [e for e in trainer.eval_history if e.get("split") != "probe"],
            "probe_domains": [e for e in trainer.eval_history if e.get("split") == "probe"],
            "resumed_from": resume}
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(str(out_dir / "model"))
        if trainer.estimator is not None:
            write_drpo_state(trainer.estimator.state_dict(), out_dir / "model" / DRPO_STATE_FILE)
        (out_dir / "rl_logs.json").write_text(json.dumps(logs, indent=1, default=str))
        if lora and lora.merge:
            merge_adapter(out_dir / "model", out_dir / "merged")
    trainer.accelerator.wait_for_everyone()
    return logs
