"""acula: Hugging Face-native AcuLa (audio–clinical understanding via language alignment).

Importing the package registers every acula class with the transformers Auto classes and the
`audio-embedding` pipeline, so `AutoModel.from_pretrained(folder)` needs no `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_acula import PRESETS, AculaConfig
from .feature_extraction_acula import AculaFeatureExtractor
from .lora import apply_lora, lora_config_for
from .losses import AlignmentLoss
from .modeling_acula import (
    AculaForAudioClassification,
    AculaForPreTraining,
    AculaForPreTrainingOutput,
    AculaModel,
    AculaPreTrainedModel,
)
from .pipeline_audio_embedding import AudioEmbeddingPipeline
from .processing_acula import AculaProcessor

__version__ = "0.1.0"

AutoConfig.register(AculaConfig.model_type, AculaConfig, exist_ok=True)
AutoModel.register(AculaConfig, AculaModel, exist_ok=True)
AutoModelForPreTraining.register(AculaConfig, AculaForPreTraining, exist_ok=True)
AutoModelForAudioClassification.register(AculaConfig, AculaForAudioClassification, exist_ok=True)
AutoFeatureExtractor.register(AculaConfig, AculaFeatureExtractor, exist_ok=True)
AutoProcessor.register(AculaConfig, AculaProcessor, exist_ok=True)

# `save_pretrained` then copies the code and writes `auto_map`, so a folder also loads in an environment without
# acula installed (with `trust_remote_code=True`, as for any custom model).
AculaConfig.register_for_auto_class()
AculaModel.register_for_auto_class("AutoModel")
AculaForPreTraining.register_for_auto_class("AutoModelForPreTraining")
AculaForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
AculaFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
AculaProcessor.register_for_auto_class("AutoProcessor")

PIPELINE_REGISTRY.register_pipeline(
    "audio-embedding", pipeline_class=AudioEmbeddingPipeline, pt_model=AutoModel, type="audio"
)

__all__ = [
    "PRESETS",
    "AculaConfig",
    "AculaFeatureExtractor",
    "AculaForAudioClassification",
    "AculaForPreTraining",
    "AculaForPreTrainingOutput",
    "AculaModel",
    "AculaPreTrainedModel",
    "AculaProcessor",
    "AlignmentLoss",
    "AudioEmbeddingPipeline",
    "apply_lora",
    "lora_config_for",
]
