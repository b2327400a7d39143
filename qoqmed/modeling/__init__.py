"""QoQ-Med model classes, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .configuration_qoqmed import QoQMedConfig
from .ecg_encoder import ECGCheckpointError, ECGEncoderConfig, ECGJEPAEncoder, load_ecg_jepa_checkpoint
from .modeling_qoqmed import QoQMedForConditionalGeneration, QoQMedModel, freeze
from .processing_qoqmed import CHAT_TEMPLATE, QoQMedProcessor, chat_messages, volume_parts

AutoConfig.register(QoQMedConfig.model_type, QoQMedConfig, exist_ok=True)
AutoModel.register(QoQMedConfig, QoQMedModel, exist_ok=True)
AutoModelForImageTextToText.register(QoQMedConfig, QoQMedForConditionalGeneration, exist_ok=True)
# Training libraries load reference models of unknown architectures through AutoModelForCausalLM.
AutoModelForCausalLM.register(QoQMedConfig, QoQMedForConditionalGeneration, exist_ok=True)
AutoProcessor.register(QoQMedConfig, QoQMedProcessor, exist_ok=True)

__all__ = [
    "CHAT_TEMPLATE", "ECGCheckpointError", "ECGEncoderConfig", "ECGJEPAEncoder", "QoQMedConfig",
    "QoQMedForConditionalGeneration", "QoQMedModel", "QoQMedProcessor", "chat_messages", "freeze",
    "load_ecg_jepa_checkpoint", "volume_parts",
]
