"""QoQ-Med as a vLLM model: vLLM's Qwen2.5-VL plus the ECG encoder, an ``ecg`` modality and QoQ-Med's processor.

vLLM imports this module through the plugin in :mod:`qoqmed.modeling.vllm_plugin`; it loads the folder that
``save_pretrained`` writes for transformers. A request is::

    {"prompt": text, "multi_modal_data": {"image": [PIL images], "ecg": [(8, 2500) arrays]}}

where ``text`` (e.g. ``QoQMedProcessor.apply_chat_template``'s) holds one ``<|vision_start|><|image_pad|>
<|vision_end|>`` per image and one ``<|ecg_start|><|ecg_pad|><|ecg_end|>`` per ECG record, in prompt order. A
volume is its slices, each an image, as everywhere in qoqmed.

- Inputs go through ``QoQMedProcessor``: its PIL image processor needs no torchvision, and its ECG checks and
  placeholder count are the transformers model's. vLLM's Qwen2-VL module itself only takes ``smart_resize`` from
  transformers' torchvision image-processing module; without torchvision that name comes from the PIL twin (see
  :func:`_image_processing_without_torchvision`), so images work on CPU-only installs.
- ECG placeholders take text rotary positions, one step per token, as in the transformers model.
- Video inputs are not offered: qoqmed shows videos and volumes as separate frames.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch


def _image_processing_without_torchvision() -> None:
    """Where torchvision is missing (CPU installs: PyPI's build needs CUDA torch), let
    ``transformers.models.qwen2_vl.image_processing_qwen2_vl`` be its PIL twin, ``image_processing_pil_qwen2_vl``.

    vLLM's Qwen2-VL module imports ``smart_resize`` from the torchvision module, which cannot be imported without
    torchvision; the PIL module defines the same function, and transformers itself falls back to its PIL image
    processor in that case. With torchvision present nothing changes.
    """
    name = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    if importlib.util.find_spec("torchvision") is None and name not in sys.modules:
        sys.modules[name] = importlib.import_module("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")


_image_processing_without_torchvision()

from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessingInfo
from vllm.model_executor.models.qwen2_vl import (Qwen2VLDummyInputsBuilder, Qwen2VLMultiModalDataParser,
                                                 Qwen2VLMultiModalProcessor)
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ProcessorBatchItems
from vllm.multimodal.processing import PromptReplacement

from .configuration_qoqmed import QoQMedConfig
from .ecg_encoder import ECGJEPAEncoder
from .modeling_qoqmed import ecg_features, ecg_projector
from .processing_qoqmed import ECG_BLOCK, QoQMedProcessor

ECG = "ecg"
# how vLLM batches the processor's ECG output: one ``ecg_values`` row per record (also the layout of records sent to
# a server as serialised multimodal features, see qoqmed.train.vllm_rollouts)
ECG_FIELDS = {"ecg_values": MultiModalFieldConfig.batched(ECG)}


class QoQMedDataParser(Qwen2VLMultiModalDataParser):
    """Qwen2-VL's parser plus ``ecg``: one record or a list of records, checked by the processor."""

    def _get_subparsers(self):
        return {**super()._get_subparsers(), ECG: self._parse_ecg_data}

    def _parse_ecg_data(self, data) -> ProcessorBatchItems:
        one = isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim == 2
        return ProcessorBatchItems([data] if one else list(data), ECG)


class QoQMedProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_hf_config(self) -> QoQMedConfig:
        return self.ctx.get_hf_config(QoQMedConfig)

    def get_hf_processor(self, **kwargs: object) -> QoQMedProcessor:
        return self.ctx.get_hf_processor(QoQMedProcessor, **kwargs)

    def get_data_parser(self) -> QoQMedDataParser:
        return QoQMedDataParser(self.get_hf_config().vision_config.spatial_merge_size,
                                expected_hidden_size=self._get_expected_hidden_size(),
                                allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, ECG: None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_max_image_tokens(), ECG: self.get_hf_processor().num_ecg_tokens}


class QoQMedDummyInputsBuilder(Qwen2VLDummyInputsBuilder):
    """Profiling inputs: Qwen2-VL's largest images plus all-zero ECG records."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return super().get_dummy_text(mm_counts) + ECG_BLOCK * mm_counts.get(ECG, 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        data = super().get_dummy_mm_data(seq_len, {**mm_counts, "video": 0}, mm_options)
        data.pop("video", None)
        proc = self.info.get_hf_processor()
        record = np.zeros((proc.ecg_num_leads, proc.ecg_num_samples), dtype=np.float32)
        data[ECG] = [record] * mm_counts.get(ECG, 0)
        return data


class QoQMedMultiModalProcessor(Qwen2VLMultiModalProcessor):
    """Runs ``QoQMedProcessor`` on a request's images and ECGs; vLLM then expands the placeholders in the prompt."""

    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str:
        # QoQMedProcessor pairs every image and ECG record with a placeholder in its text.
        proc = self.info.get_hf_processor()
        return proc.image_token * mm_counts.get("image", 0) + ECG_BLOCK * mm_counts.get(ECG, 0)

    def _get_hf_mm_inputs(self, mm_items, hf_kwargs):
        inputs = super()._get_hf_mm_inputs(mm_items, hf_kwargs)
        if "ecgs" in inputs.hf_data:  # vLLM names a modality's items "<modality>s"; the processor takes `ecg`
            inputs.hf_data[ECG] = inputs.hf_data.pop("ecgs")
        return inputs

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        return {**super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs), **ECG_FIELDS}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        proc = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        pad = proc.ecg_token_id
        return [*super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs),
                PromptReplacement(modality=ECG, target=[pad], replacement=[pad] * proc.num_ecg_tokens)]


@MULTIMODAL_REGISTRY.register_processor(QoQMedMultiModalProcessor, info=QoQMedProcessingInfo,
                                        dummy_inputs=QoQMedDummyInputsBuilder)
class QoQMedForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with QoQ-Med's ECG encoder and projector (the transformers modules themselves)."""

    # Saved QoQ-Med folders keep Qwen2.5-VL's original names plus model.ecg_encoder.* / model.ecg_projector.*;
    # the ECG prefixes come first so Qwen's catch-all "model." does not send them into the language model.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        "model.ecg_encoder.": "ecg_encoder.",
        "model.ecg_projector.": "ecg_projector.",
        **Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper.orig_to_new_prefix,
    })

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config: QoQMedConfig = self.config
        vision_parts = list(self._tower_model_names)
        with self._mark_tower_model(vllm_config, ECG):
            self.ecg_encoder = ECGJEPAEncoder(config.ecg_encoder_config)
            self.ecg_projector = ecg_projector(config)
        self._tower_model_names = vision_parts + list(self._tower_model_names)

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith(ECG):
            return ECG_BLOCK
        return super().get_placeholder_str(modality, i)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        # ECG placeholders are text to the 3-D rotary positions, as in the transformers model.
        return super().get_mrope_input_positions(input_tokens, [f for f in mm_features if f.modality != ECG])

    def get_input_modality(self, mm_kwargs) -> str:
        return ECG if "ecg_values" in mm_kwargs else super().get_input_modality(mm_kwargs)

    def embed_multimodal(self, **kwargs: object):
        # vLLM calls this once per modality, so a call holds either ECG records or images.
        ecg_values = kwargs.pop("ecg_values", None)
        if ecg_values is None:
            return super().embed_multimodal(**kwargs)
        return tuple(ecg_features(self.config, self.ecg_encoder, self.ecg_projector, ecg_values))
