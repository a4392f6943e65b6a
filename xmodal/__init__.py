"""xmodal: FashionBERT and MAP-IVR as native Hugging Face models.

Importing the package registers both models with transformers' Auto classes, so a saved folder loads with
`AutoModel.from_pretrained(folder)` without `trust_remote_code` wherever xmodal is installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoProcessor,
)

from .fashionbert import (
    FashionBertConfig,
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertImageProcessor,
    FashionBertModel,
    FashionBertProcessor,
)
from .map_ivr import MapIvrConfig, MapIvrFeatureExtractor, MapIvrMediaEncoder, MapIvrModel

__version__ = "0.1.0"

AutoConfig.register(FashionBertConfig.model_type, FashionBertConfig, exist_ok=True)
AutoModel.register(FashionBertConfig, FashionBertModel, exist_ok=True)
AutoModelForPreTraining.register(FashionBertConfig, FashionBertForPreTraining, exist_ok=True)
AutoImageProcessor.register(FashionBertConfig, image_processor_classes={"pil": FashionBertImageProcessor}, exist_ok=True)
AutoProcessor.register(FashionBertConfig, FashionBertProcessor, exist_ok=True)

AutoConfig.register(MapIvrConfig.model_type, MapIvrConfig, exist_ok=True)
AutoModel.register(MapIvrConfig, MapIvrModel, exist_ok=True)
AutoFeatureExtractor.register(MapIvrConfig, MapIvrFeatureExtractor, exist_ok=True)

__all__ = [
    "FashionBertConfig",
    "FashionBertForImageTextRetrieval",
    "FashionBertForPreTraining",
    "FashionBertImageProcessor",
    "FashionBertModel",
    "FashionBertProcessor",
    "MapIvrConfig",
    "MapIvrFeatureExtractor",
    "MapIvrMediaEncoder",
    "MapIvrModel",
]
