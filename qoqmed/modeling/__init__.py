"""QoQ-Med model classes, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .configuration_qoqmed import QoQMedConfig
from .ecg_encoder import ECGEncoderConfig, ECGJEPAEncoder
from .modeling_qoqmed import QoQMedForConditionalGeneration, QoQMedModel
from .processing_qoqmed import CHAT_TEMPLATE, QoQMedProcessor, chat_messages

AutoConfig.register(QoQMedConfig.model_type, QoQMedConfig, exist_ok=True)
AutoModel.register(QoQMedConfig, QoQMedModel, exist_ok=True)
AutoModelForImageTextToText.register(QoQMedConfig, QoQMedForConditionalGeneration, exist_ok=True)
# Training libraries load reference models of unknown architectures through AutoModelForCausalLM.
AutoModelForCausalLM.register(QoQMedConfig, QoQMedForConditionalGeneration, exist_ok=True)
AutoProcessor.register(QoQMedConfig, QoQMedProcessor, exist_ok=True)

__all__ = [
    "CHAT_TEMPLATE", "ECGEncoderConfig", "ECGJEPAEncoder", "QoQMedConfig", "QoQMedForConditionalGeneration",
    "QoQMedModel", "QoQMedProcessor", "chat_messages",
]
