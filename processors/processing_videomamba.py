"""`VideoMambaProcessor`: the `ProcessorMixin` wrapper (AutoProcessor entry point) around the video processor."""

from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin


class VideoMambaProcessor(ProcessorMixin):
    r"""
    Wraps a [`VideoMambaVideoProcessor`]; VideoMamba has no other modality. `processor(videos=...)` is
    `processor.video_processor(videos, ...)`, and `save_pretrained`/`from_pretrained` store the video
    processor's options in `processor_config.json`.

    Args:
        video_processor ([`VideoMambaVideoProcessor`]): the video processor.
    """

    def __init__(self, video_processor=None, **kwargs):
        if video_processor is None:
            raise ValueError("VideoMambaProcessor needs a `video_processor` (a VideoMambaVideoProcessor).")
        super().__init__(video_processor, **kwargs)

    def __call__(self, videos=None, **kwargs):
        """Process `videos` with the video processor; see `VideoMambaVideoProcessor.preprocess`."""
        if videos is None:
            raise ValueError("VideoMambaProcessor needs `videos`.")
        return self.video_processor(videos, **kwargs)

    def check_argument_for_proper_class(self, argument_name, argument):
        # transformers resolves the expected class by name through `transformers.VIDEO_PROCESSOR_MAPPING`,
        # a placeholder that raises when torchvision is missing; check against the base class directly.
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)
        if not isinstance(argument, VideoProcessorMixin):
            raise TypeError(f"video_processor must be a VideoProcessorMixin (e.g. VideoMambaVideoProcessor), got {type(argument).__name__}.")
        return VideoProcessorMixin

    @property
    def model_input_names(self):
        return list(self.video_processor.model_input_names)


__all__ = ["VideoMambaProcessor"]
