"""Registration of VideoMamba with transformers' Auto classes, in-process and for `trust_remote_code`."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
    AutoProcessor,
)
# The top-level `transformers.AutoVideoProcessor` is a placeholder that raises without torchvision; the
# class itself (which the pipelines use) works without it.
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .configuration_videomamba import VideoMambaConfig
from .configuration_videomamba_video_text import VideoMambaVideoTextConfig
from .modeling_videomamba import VideoMambaForImageClassification, VideoMambaForVideoClassification, VideoMambaModel
from .modeling_videomamba_pretraining import VideoMambaForPreTraining
from .processors.image_processing_videomamba import VideoMambaImageProcessor
from .processors.processing_videomamba import VideoMambaProcessor
from .modeling_videomamba_video_text import VideoMambaVideoTextModel
from .processors.processing_videomamba_video_text import VideoMambaVideoTextProcessor
from .processors.video_processing_videomamba import VideoMambaVideoProcessor

MODEL_AUTO_CLASSES = (
    (AutoModel, VideoMambaModel),
    (AutoModelForVideoClassification, VideoMambaForVideoClassification),
    (AutoModelForImageClassification, VideoMambaForImageClassification),
    (AutoModelForPreTraining, VideoMambaForPreTraining),
)


def register_auto_classes():
    """Register the config, models and processors with the Auto classes (idempotent).

    `register_for_auto_class` makes `save_pretrained` copy the modeling files next to the weights, so a
    saved directory loads with `trust_remote_code=True` where this package is not installed.
    """
    AutoConfig.register(VideoMambaConfig.model_type, VideoMambaConfig, exist_ok=True)
    VideoMambaConfig.register_for_auto_class("AutoConfig")
    for auto_class, model_class in MODEL_AUTO_CLASSES:
        auto_class.register(VideoMambaConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    # The processors' files are copied beside the weights the same way, by their own `save_pretrained`.
    AutoVideoProcessor.register(VideoMambaConfig, VideoMambaVideoProcessor, exist_ok=True)
    VideoMambaVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    # Registered as the "pil" backend: it is a PilBackend, and the torchvision backend cannot be used here.
    AutoImageProcessor.register(
        VideoMambaConfig, image_processor_classes={"pil": VideoMambaImageProcessor}, exist_ok=True
    )
    VideoMambaImageProcessor.register_for_auto_class("AutoImageProcessor")
    AutoProcessor.register(VideoMambaConfig, VideoMambaProcessor, exist_ok=True)
    VideoMambaProcessor.register_for_auto_class("AutoProcessor")
    # The video-text model: its own config type, the video processor for its clips, a processor with a tokenizer.
    AutoConfig.register(VideoMambaVideoTextConfig.model_type, VideoMambaVideoTextConfig, exist_ok=True)
    VideoMambaVideoTextConfig.register_for_auto_class("AutoConfig")
    AutoModel.register(VideoMambaVideoTextConfig, VideoMambaVideoTextModel, exist_ok=True)
    VideoMambaVideoTextModel.register_for_auto_class("AutoModel")
    AutoVideoProcessor.register(VideoMambaVideoTextConfig, VideoMambaVideoProcessor, exist_ok=True)
    AutoProcessor.register(VideoMambaVideoTextConfig, VideoMambaVideoTextProcessor, exist_ok=True)
    VideoMambaVideoTextProcessor.register_for_auto_class("AutoProcessor")
