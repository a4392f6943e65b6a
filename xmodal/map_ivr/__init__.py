"""MAP-IVR (Liu et al., AAAI 2021): activity image-to-video retrieval by disentangling appearance and motion."""

from .configuration_map_ivr import MapIvrConfig
from .feature_extraction_map_ivr import MapIvrFeatureExtractor
from .media_encoding_map_ivr import MapIvrMediaEncoder, clip_motion_descriptor, image_descriptor, read_video_frames
from .modeling_map_ivr import (
    MapIvrEncodedVideos,
    MapIvrModel,
    MapIvrModelOutput,
    MapIvrPreTrainedModel,
    MapIvrRanking,
    MapIvrScores,
    MapIvrScoringOptions,
    kl_divergence_loss,
    orthogonality_loss,
    pool_proposals,
    reconstruction_loss,
)

__all__ = [
    "MapIvrConfig",
    "MapIvrEncodedVideos",
    "MapIvrFeatureExtractor",
    "MapIvrMediaEncoder",
    "MapIvrModel",
    "MapIvrModelOutput",
    "MapIvrPreTrainedModel",
    "MapIvrRanking",
    "MapIvrScores",
    "MapIvrScoringOptions",
    "clip_motion_descriptor",
    "image_descriptor",
    "kl_divergence_loss",
    "orthogonality_loss",
    "pool_proposals",
    "read_video_frames",
    "reconstruction_loss",
]
