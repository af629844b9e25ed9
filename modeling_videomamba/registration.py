"""Registration of VideoMamba with transformers' Auto classes, in-process and for `trust_remote_code`."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
)

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba import (
    VideoMambaForImageClassification,
    VideoMambaForPreTraining,
    VideoMambaForVideoClassification,
    VideoMambaModel,
)

MODEL_AUTO_CLASSES = (
    (AutoModel, VideoMambaModel),
    (AutoModelForVideoClassification, VideoMambaForVideoClassification),
    (AutoModelForImageClassification, VideoMambaForImageClassification),
    (AutoModelForPreTraining, VideoMambaForPreTraining),
)


def register_auto_classes():
    """Register the config and models with the Auto classes (idempotent).

    `register_for_auto_class` makes `save_pretrained` copy the modeling files next to the weights, so a
    saved directory loads with `trust_remote_code=True` where this package is not installed.
    """
    AutoConfig.register(VideoMambaConfig.model_type, VideoMambaConfig, exist_ok=True)
    VideoMambaConfig.register_for_auto_class("AutoConfig")
    for auto_class, model_class in MODEL_AUTO_CLASSES:
        auto_class.register(VideoMambaConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
