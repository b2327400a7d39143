"""QoQ-Med configuration: a Qwen2.5-VL configuration plus the ECG encoder and how its output enters the LLM."""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig

from .ecg_encoder import TOKEN_MODES, ECGEncoderConfig, num_ecg_tokens

ECG_PROJECTORS = ("linear", "mlp")
FREEZABLE = ("vision", "ecg", "projector", "llm")


class QoQMedConfig(Qwen2_5_VLConfig):
    """Qwen2.5-VL + ECG-JEPA.

    ecg_config: keyword arguments of :class:`ECGEncoderConfig` (leads, samples, patch size, width, depth, heads).
    ecg_token_mode: "pooled" (1 token per record, as the reference model), "per_lead" (8) or "patch" (all 400).
    ecg_projector: "linear" (reference) or "mlp" (Linear-GELU-Linear) into the LLM width.
    ecg_sampling_rate: the rate (Hz) records are resampled to before encoding; recorded so inference matches training.
    ecg_normalize: per-lead z-scoring before encoding.
    frozen_modules: parts kept frozen when the model is loaded, among "vision", "ecg", "projector", "llm"
        (set through ``qoqmed.modeling.freeze``).
    encoders_every_step: in training and under several processes, every forward that reads a prompt also runs the
        ECG encoder and the vision tower on a dummy input where the batch has none, adding exactly zero: sharded
        ranks (ZeRO-3, FSDP) gather each encoder's parameters collectively, so ranks whose batches hold different
        modalities would otherwise wait on each other. Set False only when every batch holds every modality.
    """

    model_type = "qoqmed"
    # TRL's model loader looks up ``auto_map`` on configs of architectures that transformers does not ship.
    auto_map = {}

    ecg_config: dict | None = None
    ecg_token_mode: str = "pooled"
    ecg_projector: str = "linear"
    ecg_token_id: int | None = None
    ecg_start_token_id: int | None = None
    ecg_end_token_id: int | None = None
    ecg_sampling_rate: int = 250
    ecg_normalize: bool = False
    frozen_modules: list | None = None
    encoders_every_step: bool = True

    def __post_init__(self, **kwargs):
        self.ecg_config = ECGEncoderConfig(**(self.ecg_config or {})).to_dict()
        if self.ecg_token_mode not in TOKEN_MODES:
            raise ValueError(f"ecg_token_mode={self.ecg_token_mode!r}; choose one of {TOKEN_MODES}")
        if self.ecg_projector not in ECG_PROJECTORS:
            raise ValueError(f"ecg_projector={self.ecg_projector!r}; choose one of {ECG_PROJECTORS}")
        unknown = set(self.frozen_modules or []) - set(FREEZABLE)
        if unknown:
            raise ValueError(f"frozen_modules has {sorted(unknown)}; choose among {FREEZABLE}")
        super().__post_init__(**kwargs)

    @property
    def ecg_encoder_config(self) -> ECGEncoderConfig:
        return ECGEncoderConfig(**self.ecg_config)

    @property
    def num_ecg_tokens(self) -> int:
        return num_ecg_tokens(self.ecg_encoder_config, self.ecg_token_mode)
