"""Typed settings for every section of a recipe (``data``, ``model``, ``sft``, ``rl``, ``eval``), checked when the
recipe is loaded, so that a typo or a bad value stops a run before any data is generated or any model trained.

TRL-free, so that configs can be read and checked without the trainer.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..algos.drpo import DRPO, MODES
from ..data.climb_mini import ClimbMiniConfig
from ..modeling.configuration_qoqmed import FREEZABLE
from ..modeling.lora import FULLY_TRAINABLE, LM_PROJECTIONS, language_model_targets
from ..modeling.tiny import TinySpec
from ..rewards.scores import make_scorer

ESTIMATORS = ("grpo", "drgrpo", "rloo", "disco", "drpo")
LOSS_TYPES = {"token_mean": "dapo", "sequence_mean": "grpo", "dapo": "dapo", "grpo": "grpo", "bnpo": "bnpo",
              "dr_grpo": "dr_grpo"}


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
    prompt_style: str = "qoqmed"       # qoqmed | released (the released weights' prompt); see qoqmed.data.prompt_styles

    def __post_init__(self) -> None:
        _check_prompt_style(self.prompt_style, "sft")
        if self.batch_size < 1:
            raise ValueError(f"sft.batch_size={self.batch_size} must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0 and self.enabled:
            raise ValueError("sft: set epochs > 0 or max_steps > 0, or enabled: false to skip the warm start")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]


ROLLOUT_ENGINES = ("hf", "vllm")
VLLM_MODES = ("colocate", "server")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class RolloutSettings:
    """How RL samples its rollouts (recipe section ``rl.rollout``): ``engine: hf`` (transformers ``generate``) or
    ``engine: vllm`` (TRL's vLLM backend), colocated in the training process or on a ``vllm serve`` server.

    With vLLM the sampler and the trained model compute log-probs with different kernels, so TRL's importance
    sampling correction reweights the loss by exp(training log-prob - vLLM log-prob) (``importance_sampling``: a
    TRL mode, or None to switch it off); the per-step gap is logged as ``sampling/sampling_logp_difference/*``.
    """

    engine: str = "hf"                   # hf | vllm
    vllm_mode: str = "colocate"          # colocate (one process samples and trains) | server (vllm serve elsewhere)
    gpu_memory_utilization: float = 0.3  # colocate: share of the GPU vLLM may take (weights + KV cache)
    max_model_length: int | None = None  # colocate: prompt + completion tokens (None: the model's own limit)
    tensor_parallel_size: int = 1        # colocate: GPUs one vLLM instance spans
    enable_sleep_mode: bool = False      # colocate: free vLLM's memory during the optimiser step
    server_url: str | None = None        # server: e.g. http://10.0.0.2:8000 (None: http://0.0.0.0:8000)
    server_timeout: float = 240.0        # server: seconds to wait for it to come up
    # token_truncate: each token's ratio clipped at clip_max (the loss is a token mean); a sequence-level ratio would
    # multiply a small per-token gap over every token of a long rollout
    importance_sampling: str | None = "token_truncate"  # token_/sequence_ truncate | mask, or None
    importance_sampling_clip_max: float | None = 3.0
    importance_sampling_clip_min: float | None = None

    def __post_init__(self) -> None:
        if self.engine not in ROLLOUT_ENGINES:
            raise ValueError(f"rl.rollout.engine={self.engine!r}; choose one of {ROLLOUT_ENGINES}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"rl.rollout.vllm_mode={self.vllm_mode!r}; choose one of {VLLM_MODES}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rl.rollout.gpu_memory_utilization={self.gpu_memory_utilization}: in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"rl.rollout.tensor_parallel_size={self.tensor_parallel_size} must be >= 1")
        if self.importance_sampling is not None and self.importance_sampling not in IS_MODES:
            raise ValueError(f"rl.rollout.importance_sampling={self.importance_sampling!r}; choose one of "
                             f"{IS_MODES} or null")
        low, high = self.importance_sampling_clip_min, self.importance_sampling_clip_max
        if low is not None and high is not None and not 0 <= low < high:
            raise ValueError(f"rl.rollout.importance_sampling_clip_min={low} and _clip_max={high}: "
                             "need 0 <= min < max")


@dataclass
class RLSettings:
    estimator: str = "drpo"            # grpo | drgrpo | rloo | disco | drpo
    drpo_mode: str = "paper"           # paper | bounded | reference
    drpo_history: int | None = None    # paper/bounded mode: keep the last H questions per domain
    drpo_kl_quantile: float | None = 0.75  # KL damping (Eqs. 4-5); needs a reference model, i.e. beta > 0
    drpo_k_max: int | None = None      # most clusters per domain (None: the mode's default)
    drpo_elbow_tol: float = 0.10       # elbow rule: first k with D_{k+1} < tol * D_k
    drpo_scaling: str = "hierarchical"  # hierarchical (T_g * T_c) | domain_only | cluster_only
    drpo_cluster_cap: float | None = None  # bound on the within-domain cluster reweighting (see qoqmed.algos.drpo)
    domain_key: str = "domain"         # what DRPO/DISCO group by: domain | dataset | any field of the records
    disco_tau: float = 1.0             # DISCO difficulty weight exp(tau * (1 - self-consistency))
    num_generations: int = 4
    num_iterations: int = 1            # policy updates per generation batch (GRPO's mu)
    batch_size: int = 16               # rollouts per device per step (a multiple of num_generations)
    gradient_accumulation_steps: int = 1
    max_steps: int = 40
    learning_rate: float = 5e-4
    beta: float = 1e-4                 # KL coefficient (k3 estimator, as the reference)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.3
    dual_clip: float | None = None     # cap on the ratio for negative advantages (reference: 3.0)
    loss_type: str = "dapo"            # token_mean (= dapo) | sequence_mean (= grpo) | bnpo | dr_grpo
    temperature: float = 1.0
    max_completion_length: int = 96
    reward_preset: str = "paper"       # paper | reference (the released scorer exactly); see qoqmed.rewards
    prompt_style: str = "qoqmed"       # qoqmed | released; see qoqmed.data.prompt_styles
    iou_reduce: str | None = None      # paper preset: max (default) or mean over predicted boxes
    boxes_required: bool | None = None  # paper preset: an empty box list loses format credit where there is a
                                        # region to localise (see qoqmed.rewards.make_scorer)
    seed: int = 0
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = None
    eval_steps: int | None = None      # evaluate (generate + score) on eval records every N steps
    probe_steps: int | None = None     # score a fixed probe set of training questions every N steps (and at 0)
    probe_per_domain: int = 4          # probe questions per domain, sampled like RL (num_generations, temperature)
    bf16: bool | None = None           # None: on when CUDA is available
    gradient_checkpointing: bool = False
    report_to: list[str] = field(default_factory=list)  # e.g. ["tensorboard"], ["wandb"]; the CSV is always written
    progress_bar: bool = True
    model_dtype: str | None = None     # load weights as e.g. "bfloat16" (pure bf16 training of a large model)
    freeze: list[str] = field(default_factory=list)  # parts kept fixed: vision, ecg, projector, llm
    rollout: RolloutSettings = field(default_factory=RolloutSettings)  # sampling engine (hf generate or vLLM)

    def __post_init__(self) -> None:
        if not isinstance(self.rollout, RolloutSettings):
            self.rollout = section(RolloutSettings, self.rollout, "rl.rollout")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"rl.estimator={self.estimator!r}; choose one of {ESTIMATORS}")
        if self.drpo_mode not in MODES:
            raise ValueError(f"rl.drpo_mode={self.drpo_mode!r}; choose one of {MODES}")
        if self.drpo_history is not None and (self.drpo_mode == "reference" or self.drpo_history < 1):
            raise ValueError(f"rl.drpo_history={self.drpo_history!r}: a positive int, and only in paper/bounded mode "
                             "(reference mode keeps every question)")
        _check_prompt_style(self.prompt_style, "rl")
        if self.num_generations < 2:
            raise ValueError(f"rl.num_generations={self.num_generations}: group-relative advantages need >= 2")
        if self.batch_size % self.num_generations:
            raise ValueError(f"rl.batch_size={self.batch_size} must be a multiple of num_generations="
                             f"{self.num_generations}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"rl.loss_type={self.loss_type!r}; choose one of {sorted(LOSS_TYPES)}")
        if self.dual_clip is not None and not self.dual_clip > 1 + self.epsilon_high:
            raise ValueError(f"rl.dual_clip={self.dual_clip} must exceed 1 + epsilon_high = {1 + self.epsilon_high} "
                             "(it caps the ratio of negative-advantage tokens above the clip range)")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        try:
            make_scorer(self.reward_preset, iou_reduce=self.iou_reduce, boxes_required=self.boxes_required)
        except ValueError as exc:
            raise ValueError(f"rl.reward_preset / rl.iou_reduce / rl.boxes_required: {exc}") from None
        if self.probe_steps is not None and (self.probe_steps < 1 or self.probe_per_domain < 1):
            raise ValueError(f"rl.probe_steps={self.probe_steps} and rl.probe_per_domain={self.probe_per_domain} "
                             "must be positive")
        if not isinstance(self.domain_key, str) or not self.domain_key:
            raise ValueError(f"rl.domain_key={self.domain_key!r}: a record field name such as 'domain' or 'dataset'")
        bad = sorted(set(self.freeze) - set(FREEZABLE))
        if bad:
            raise ValueError(f"rl.freeze has unknown part(s) {bad}; choose from {list(FREEZABLE)}")
        if self.model_dtype is not None and not isinstance(getattr(torch, self.model_dtype, None), torch.dtype):
            raise ValueError(f"rl.model_dtype={self.model_dtype!r} is not a torch dtype (e.g. bfloat16, float32)")
        if self.estimator == "drpo":
            try:
                make_estimator(self)
            except ValueError as exc:
                raise ValueError(f"rl.drpo_*: {exc}") from None


def make_estimator(settings: RLSettings) -> DRPO | None:
    """The stateful estimator of ``settings`` (DRPO), or None for the stateless ones."""
    if settings.estimator != "drpo":
        return None
    options = {"k_max": settings.drpo_k_max, "scaling": settings.drpo_scaling, "cluster_cap": settings.drpo_cluster_cap}
    defaults = {"k_max": None, "scaling": "hierarchical", "cluster_cap": None}  # None: the mode's own default
    options = {k: v for k, v in options.items() if v != defaults[k]}
    return DRPO(settings.num_generations, mode=settings.drpo_mode, history=settings.drpo_history,
                kl_quantile=settings.drpo_kl_quantile, seed=settings.seed, elbow_tol=settings.drpo_elbow_tol,
                **options)


QUANTIZE = ("4bit", "8bit")
LORA_STAGES = ("sft", "rl")


@dataclass
class LoRASettings:
    """The ``lora`` section: train low-rank adapters (peft) on the language model instead of every weight.

    ``target_modules``: projections of the language model's blocks (never the vision tower's). ``projector`` and
    ``ecg_encoder``: ``train`` (in full, saved with the adapter) or ``freeze``; the vision tower stays frozen.
    ``quantize``: ``4bit`` or ``8bit`` loads the RL stage's base weights through bitsandbytes (QLoRA).
    ``stages``: the training stages that use adapters; ``merge``: also write the merged full model."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LM_PROJECTIONS))
    projector: str = "train"
    ecg_encoder: str = "freeze"
    quantize: str | None = None
    stages: list[str] = field(default_factory=lambda: list(LORA_STAGES))
    merge: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora.r={self.r!r}: the adapter rank, a positive integer")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha!r}: a positive number (the update is scaled by alpha / r)")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout={self.dropout!r}: a probability in [0, 1)")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        try:
            language_model_targets(self.target_modules)
        except ValueError as exc:
            raise ValueError(f"lora.{exc}") from None
        for name in FULLY_TRAINABLE:
            if getattr(self, name) not in ("train", "freeze"):
                raise ValueError(f"lora.{name}={getattr(self, name)!r}: train or freeze")
        if isinstance(self.stages, str):
            self.stages = [self.stages]
        if not self.stages or set(self.stages) - set(LORA_STAGES):
            raise ValueError(f"lora.stages={self.stages!r}: a non-empty subset of {list(LORA_STAGES)}")
        if self.quantize is not None:
            if self.quantize not in QUANTIZE:
                raise ValueError(f"lora.quantize={self.quantize!r}: one of {list(QUANTIZE)}, or null for none")
            if "sft" in self.stages:
                raise ValueError("lora.quantize applies to the RL stage, which loads its base from a folder; "
                                 "set lora.stages: [rl] (the warm start then trains in full or set no quantize)")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError(f"lora.quantize={self.quantize!r} (QLoRA) needs the bitsandbytes package, which "
                                 "is not installed here (pip install bitsandbytes; it needs a CUDA GPU); set "
                                 "lora.quantize: null to train adapters on unquantized weights")

    def check_freeze(self, freeze: list[str]) -> None:
        """``rl.freeze`` beside adapters: the base is frozen anyway, but a part set to train here cannot be frozen."""
        wanted = {"projector": self.projector, "ecg": self.ecg_encoder}
        clash = [part for part in freeze if wanted.get(part) == "train"]
        if clash:
            raise ValueError(f"rl.freeze lists {clash} but the lora section trains them; under LoRA set "
                             "lora.projector / lora.ecg_encoder to freeze instead")

    def peft_config(self):
        """The peft ``LoraConfig`` of these settings."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                          target_modules=language_model_targets(self.target_modules), task_type="CAUSAL_LM",
                          modules_to_save=[FULLY_TRAINABLE[k] for k in FULLY_TRAINABLE if getattr(self, k) == "train"]
                          or None)

    def quantization_config(self):
        """transformers' ``BitsAndBytesConfig`` for ``quantize`` (None without): the language model's linear
        layers are quantized, the vision tower, ECG parts and the output head stay in the model's dtype."""
        if self.quantize is None:
            return None
        from transformers import BitsAndBytesConfig

        skip = ["visual", "ecg_encoder", "ecg_projector", "lm_head"]
        if self.quantize == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip)


@dataclass
class DataSection:
    synthetic: dict | None = None      # keyword arguments of generate_climb_mini, or None to use files
    train: str | None = None
    test: str | None = None
    val: str | None = None             # optional: periodic evaluation during RL (rl.eval_steps) and SFT
    allow_outside_paths: bool = False  # accept rows whose paths leave their jsonl's folder ("../")

    def __post_init__(self) -> None:
        if self.synthetic is not None:
            section(ClimbMiniConfig, self.synthetic, "data.synthetic").validate()
        elif not self.train or not self.test:
            raise ValueError("config section 'data' needs either 'synthetic' or both 'train' and 'test' jsonl paths")


@dataclass
class ModelSettings:
    """``init``: ``tiny`` (a fresh tiny model sized by ``tiny``) or a folder with a saved model and processor, read
    as ``dtype`` (e.g. bfloat16; None: as saved). In YAML the tiny model's sizes sit beside ``init``."""

    init: str = "tiny"
    dtype: str | None = None
    tiny: TinySpec = field(default_factory=TinySpec)

    def __post_init__(self) -> None:
        if not isinstance(self.init, str) or not self.init:
            raise ValueError(f"model.init={self.init!r}: 'tiny' or a model folder")
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"model.dtype={self.dtype!r} is not a torch dtype (e.g. bfloat16, float32)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ModelSettings:
        raw = dict(raw or {})
        init, dtype = raw.pop("init", "tiny"), raw.pop("dtype", None)
        if raw and init != "tiny":
            raise ValueError(f"config section 'model': {sorted(raw)} size a tiny model; init is {init!r}")
        try:
            tiny = section(TinySpec, raw, "model")
        except ValueError as exc:
            raise ValueError(f"{exc} (or init, dtype)") from None
        return cls(init=init, dtype=dtype, tiny=tiny)


@dataclass
class EvalSection:
    batch_size: int = 32
    max_new_tokens: int = 96
    reward_preset: str = "paper"       # paper | reference (the released scorer exactly)
    iou_reduce: str | None = None      # paper preset: max (default) or mean
    evaluate_warm_start: bool = True   # also evaluate the warm-started model, to show what RL changed
    prompt_style: str = "qoqmed"       # qoqmed | released; see qoqmed.data.prompt_styles

    def __post_init__(self) -> None:
        _check_prompt_style(self.prompt_style, "eval")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"eval.batch_size={self.batch_size} and eval.max_new_tokens={self.max_new_tokens} "
                             "must be >= 1")
        try:
            make_scorer(self.reward_preset, iou_reduce=self.iou_reduce)
        except ValueError as exc:
            raise ValueError(f"eval.reward_preset / eval.iou_reduce: {exc}") from None


def _check_prompt_style(style: str, name: str) -> None:
    from ..data.prompt_styles import check_style

    try:
        check_style(style)
    except ValueError as exc:
        raise ValueError(f"{name}.{exc}") from None


def section(cls, raw: dict | None, name: str):
    """``cls(**raw)`` for the config section ``name``; an unknown key is a ValueError naming it and the known ones."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config section {name!r} must be a mapping of keys, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"config section {name!r}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    return cls(**raw)
