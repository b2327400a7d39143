"""QoQ-Med model: Qwen2.5-VL whose input embeddings also take ECG encoder tokens at ``<|ecg_pad|>`` positions.

ECG tokens are spliced in at the backbone (``QoQMedModel``), not only in the outer model, because training
libraries compute log-probabilities through ``model.model`` directly. ECG tokens use ordinary text rotary
positions (one step per token), like any text token between vision blocks: the processor marks them as text in
``mm_token_type_ids``, so Qwen2.5-VL's ``get_rope_index`` advances them one position each.

Qwen2.5-VL checkpoints on disk use the original names (``model.layers.*``, ``visual.*``); the same renaming that
transformers applies to ``Qwen2_5_VLForConditionalGeneration`` is registered for this class, so a Qwen2.5-VL or
QoQ-Med-VL checkpoint loads straight into it and saved QoQ-Med checkpoints keep that layout.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPreTrainedModel

from .configuration_qoqmed import FREEZABLE, QoQMedConfig
from .ecg_encoder import ECGJEPAEncoder, cross_pattern_mask, load_ecg_jepa_checkpoint, sincos_2d_positions


def _register_checkpoint_layout() -> None:
    # transformers only applies its Qwen2.5-VL renaming to its own classes; ours are "custom code" to it.
    # ECG modules are ours and already carry their final names, so the renaming leaves them alone. The patterns
    # keep the shape of transformers' own (a lookahead closing with "))"), which its reverse mapping for saving parses.
    own = "(language_model|visual|ecg_encoder|ecg_projector)"
    if get_checkpoint_conversion_mapping("QoQMedForConditionalGeneration") is None:
        register_checkpoint_conversion_mapping("QoQMedForConditionalGeneration", [
            WeightRenaming(source_patterns=r"^visual", target_patterns="model.visual"),
            WeightRenaming(source_patterns=rf"^model(?!\.{own})", target_patterns="model.language_model"),
        ])
    if get_checkpoint_conversion_mapping("QoQMedModel") is None:
        register_checkpoint_conversion_mapping("QoQMedModel", [
            WeightRenaming(source_patterns=rf"^model(?!\.{own})", target_patterns="model.language_model"),
        ])


_register_checkpoint_layout()


def ecg_projector(config: QoQMedConfig) -> nn.Module:
    """The module mapping ECG encoder tokens into the LLM width, as ``config.ecg_projector`` names it."""
    in_dim, out_dim = config.ecg_encoder_config.hidden_size, config.text_config.hidden_size
    if config.ecg_projector == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def normalize_per_lead(ecg: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-record, per-lead z-score over time."""
    mean = ecg.mean(-1, keepdim=True)
    std = ecg.std(-1, keepdim=True)
    return (ecg - mean) / (std + eps)


def ecg_features(config: QoQMedConfig, encoder: ECGJEPAEncoder, projector: nn.Module, ecg_values: torch.Tensor
                 ) -> torch.Tensor:
    """``(num_records, leads, samples) -> (num_records, tokens_per_record, hidden)``: what enters the LLM."""
    if config.ecg_normalize:
        ecg_values = normalize_per_lead(ecg_values.float())
    return projector(encoder.tokens(ecg_values, config.ecg_token_mode))


def _init_ecg_buffers(module: nn.Module) -> None:
    # The position table and attention mask are derived, not saved; rebuild them after meta-device loading.
    if isinstance(module, ECGJEPAEncoder):
        cfg = module.config
        init.copy_(module.pos_embed, sincos_2d_positions(cfg.hidden_size, cfg.num_leads, cfg.num_patches))
        init.copy_(module.attn_mask, cross_pattern_mask(cfg.num_leads, cfg.num_patches))


# With device_map="auto" the ECG encoder stays on one device: its blocks share the position table and mask buffers.
_NO_SPLIT = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "ECGJEPAEncoder"]


class QoQMedModel(Qwen2_5_VLModel):
    config_class = QoQMedConfig
    _no_split_modules = _NO_SPLIT

    def _init_weights(self, module):
        super()._init_weights(module)
        _init_ecg_buffers(module)

    def __init__(self, config: QoQMedConfig):
        super().__init__(config)
        self.ecg_encoder = ECGJEPAEncoder(config.ecg_encoder_config)
        self.ecg_projector = ecg_projector(config)
        self.post_init()

    def get_ecg_features(self, ecg_values: torch.Tensor) -> torch.Tensor:
        """``(num_records, leads, samples) -> (num_records, tokens_per_record, hidden)``."""
        return ecg_features(self.config, self.ecg_encoder, self.ecg_projector, ecg_values)

    def forward(self, input_ids=None, inputs_embeds=None, ecg_values=None, **kwargs):
        if ecg_values is not None and ecg_values.shape[0] == 0:
            ecg_values = None  # a batch without ECG records does not run the encoder at all
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        # A placeholder *generated* while decoding (sampling without suppression) is just a token, not an ECG.
        decoding = cache is not None and cache.get_seq_length() > 0
        if input_ids is not None and self.config.ecg_token_id is not None:
            ecg_mask = input_ids == self.config.ecg_token_id
            n_slots = int(ecg_mask.sum())
            if ecg_values is None and n_slots and not decoding:
                raise ValueError(
                    f"the prompt holds {n_slots} ECG placeholder tokens but no `ecg_values` were given; pass the ECG "
                    "records (num_records, leads, samples) in prompt order"
                )
            if ecg_values is not None:
                if inputs_embeds is None:
                    inputs_embeds = self.get_input_embeddings()(input_ids)
                features = self.get_ecg_features(ecg_values.to(inputs_embeds.device))
                if features.shape[0] * features.shape[1] != n_slots:
                    raise ValueError(
                        f"{features.shape[0]} ECG records give {features.shape[0] * features.shape[1]} tokens but the "
                        f"prompt holds {n_slots} ECG placeholder tokens ({self.config.num_ecg_tokens} per record)"
                    )
                features = features.reshape(-1, features.shape[-1]).to(inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(ecg_mask.unsqueeze(-1), features)
        elif ecg_values is not None:
            raise ValueError("`ecg_values` need `input_ids` to locate the ECG placeholder tokens")
        if not decoding and self._runs_every_encoder():
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = inputs_embeds + self._absent_encoders_zero(
                ecg_values is None, kwargs.get("pixel_values") is None, inputs_embeds)
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)

    def _runs_every_encoder(self) -> bool:
        """config.encoders_every_step, in training or when several processes share the model."""
        if not self.config.encoders_every_step:
            return False
        several = torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1
        return self.training or several

    def _absent_encoders_zero(self, no_ecg: bool, no_images: bool, like: torch.Tensor) -> torch.Tensor:
        """Exactly zero, computed through each encoder the batch does not use (one all-zero ECG record; one
        merge-window of zero image patches), so every rank runs every encoder's forward and backward."""
        total = like.new_zeros(())
        if no_ecg:
            enc = self.config.ecg_encoder_config
            dummy = torch.zeros(1, enc.num_leads, enc.num_samples, device=like.device)
            total = total + self.get_ecg_features(dummy).sum().to(like.dtype)
        if no_images:
            vis = self.visual.config
            side = vis.spatial_merge_size
            width = vis.in_channels * vis.temporal_patch_size * vis.patch_size ** 2
            pixels = torch.zeros(side * side, width, device=like.device, dtype=self.visual.dtype)
            grid = torch.tensor([[1, side, side]], device=like.device)
            features = self.get_image_features(pixels, grid).pooler_output
            total = total + sum(f.sum() for f in features).to(like.dtype)
        return total * 0.0


class QoQMedForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    config_class = QoQMedConfig
    _no_split_modules = _NO_SPLIT

    def _init_weights(self, module):
        super()._init_weights(module)
        _init_ecg_buffers(module)

    def __init__(self, config: QoQMedConfig):
        # Build the QoQ-Med backbone directly instead of a Qwen2.5-VL one that would be thrown away.
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.model = QoQMedModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, pixel_values=None, pixel_values_videos=None, image_grid_thw=None,
                video_grid_thw=None, mm_token_type_ids=None, second_per_grid_ts=None, logits_to_keep=0,
                ecg_values: torch.Tensor | None = None, **kwargs):
        """Qwen2.5-VL forward plus ``ecg_values``: (num_records, leads, samples), one per ECG block, prompt order."""
        if ecg_values is not None:
            kwargs["ecg_values"] = ecg_values
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids, second_per_grid_ts=second_per_grid_ts,
            logits_to_keep=logits_to_keep, **kwargs,
        )

    def prepare_inputs_for_generation(self, input_ids, ecg_values=None, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        # Like pixel values, the ECG is encoded once at prefill; later steps read it from the KV cache.
        if ecg_values is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            inputs["ecg_values"] = ecg_values
        return inputs

    def load_ecg_encoder(self, path, key: str = "encoder", trust_pickle: bool = False) -> None:
        """Load official ECG-JEPA weights (``torch.load(path)[key]``) into the ECG encoder, strictly checked."""
        load_ecg_jepa_checkpoint(self.model.ecg_encoder, path, key=key, trust_pickle=trust_pickle)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # requires_grad is not part of a checkpoint; the config records which parts stay frozen.
        if model.config.frozen_modules:
            freeze(model)
        return loaded

    def placeholder_token_ids(self) -> list[int]:
        """Token ids the model must never generate (multimodal placeholders)."""
        return placeholder_token_ids(self.config)


def placeholder_token_ids(config: QoQMedConfig) -> list[int]:
    """Token ids a QoQ-Med model must never generate (multimodal placeholders), by its config."""
    ids = [config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id,
           config.ecg_token_id, config.ecg_start_token_id, config.ecg_end_token_id]
    return sorted({i for i in ids if i is not None})


def model_parts(model: QoQMedForConditionalGeneration) -> dict[str, list[nn.Module]]:
    """The parts ``freeze`` acts on: vision tower (with its merger), ECG encoder, ECG projector, LLM (+ head)."""
    inner = model.model
    return {"vision": [inner.visual], "ecg": [inner.ecg_encoder], "projector": [inner.ecg_projector],
            "llm": [inner.language_model, model.lm_head]}


def freeze(model: QoQMedForConditionalGeneration, vision: bool | None = None, ecg: bool | None = None,
           llm: bool | None = None, projector: bool | None = None) -> dict[str, int]:
    """Set which parts of a QoQ-Med model train; ``None`` keeps what the config records (``frozen_modules``).

    The choice is written to ``model.config.frozen_modules``, so it is saved with the model and re-applied by
    ``from_pretrained``. Returns the number of trainable and frozen parameters.
    """
    recorded = set(model.config.frozen_modules or [])
    wanted = {"vision": vision, "ecg": ecg, "projector": projector, "llm": llm}
    frozen = [name for name in FREEZABLE if (wanted[name] if wanted[name] is not None else name in recorded)]
    for name, modules in model_parts(model).items():
        for module in modules:
            module.requires_grad_(name not in frozen)
    model.config.frozen_modules = frozen
    # With tied embeddings lm_head shares the embedding Parameter, so it follows the LLM setting.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable}
