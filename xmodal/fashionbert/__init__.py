"""FashionBERT (Gao et al., SIGIR 2020): text and image matching with adaptive loss for cross-modal retrieval."""

from .configuration_fashionbert import FashionBertConfig
from .image_processing_fashionbert import FashionBertImageProcessor
from .modeling_fashionbert import (
    FashionBertForImageTextRetrieval,
    FashionBertForImageTextRetrievalOutput,
    FashionBertForPreTraining,
    FashionBertForPreTrainingOutput,
    FashionBertModel,
    FashionBertPreTrainedModel,
    gradient_task_weights,
    loss_softmax_task_weights,
    masked_patch_kl,
)
from .pipeline_fashionbert import FashionRetrievalPipeline
from .processing_fashionbert import FashionBertProcessor

__all__ = [
    "FashionBertConfig",
    "FashionBertForImageTextRetrieval",
    "FashionBertForImageTextRetrievalOutput",
    "FashionBertForPreTraining",
    "FashionBertForPreTrainingOutput",
    "FashionBertImageProcessor",
    "FashionBertModel",
    "FashionBertPreTrainedModel",
    "FashionBertProcessor",
    "FashionRetrievalPipeline",
    "gradient_task_weights",
    "loss_softmax_task_weights",
    "masked_patch_kl",
]
