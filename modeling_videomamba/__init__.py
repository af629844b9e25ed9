"""VideoMamba (arXiv 2403.06977) for Hugging Face transformers.

Importing the package registers the model with the Auto classes (AutoConfig, AutoModel,
AutoModelForVideoClassification, AutoModelForImageClassification, AutoVideoProcessor, AutoImageProcessor,
AutoProcessor), and the video-text model (AutoConfig, AutoModel, AutoProcessor).
"""

from .configuration_videomamba import VideoMambaConfig
from .configuration_videomamba_video_text import VideoMambaVideoTextConfig
from .flops import FlopCount, count_flops
from .modeling_videomamba import (
    VideoMambaForImageClassification,
    VideoMambaForVideoClassification,
    VideoMambaModel,
    VideoMambaModelOutput,
    VideoMambaPreTrainedModel,
)
from .features import VideoMambaFeatures, long_video_features, video_features
from .modeling_videomamba_pretraining import VideoMambaForPreTraining
from .modeling_videomamba_video_text import VideoMambaVideoTextModel, VideoMambaVideoTextOutput
from .processors import (
    VideoDecodingError,
    VideoDecodingWarning,
    VideoMambaImageProcessor,
    VideoMambaProcessor,
    VideoMambaVideoProcessor,
    classify_long_video,
    VideoMambaVideoTextProcessor,
    dataset_video_transform,
    multi_view_predict,
    read_video,
)
from .selective_scan import causal_conv1d, cuda_kernels_available, selective_scan, selective_scan_reference
from .registration import register_auto_classes

register_auto_classes()

__all__ = [
    "VideoMambaConfig",
    "VideoMambaModel",
    "VideoMambaModelOutput",
    "VideoMambaPreTrainedModel",
    "VideoMambaForVideoClassification",
    "VideoMambaForImageClassification",
    "VideoMambaForPreTraining",
    "VideoMambaVideoTextConfig",
    "VideoMambaVideoTextModel",
    "VideoMambaVideoTextOutput",
    "VideoMambaVideoTextProcessor",
    "selective_scan",
    "selective_scan_reference",
    "causal_conv1d",
    "cuda_kernels_available",
    "count_flops",
    "FlopCount",
    "register_auto_classes",
    "VideoMambaVideoProcessor",
    "VideoMambaProcessor",
    "VideoMambaImageProcessor",
    "VideoDecodingError",
    "VideoDecodingWarning",
    "read_video",
    "classify_long_video",
    "multi_view_predict",
    "dataset_video_transform",
    "VideoMambaFeatures",
    "video_features",
    "long_video_features",
]
