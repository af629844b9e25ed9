"""`VideoMambaProcessor`: the `ProcessorMixin` wrapper (AutoProcessor entry point) around the video processor."""

from transformers.processing_utils import ProcessorMixin
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME, VIDEO_PROCESSOR_NAME, cached_file
from transformers.video_processing_utils import VideoProcessorMixin

from .video_processing_videomamba import save_frame_image_processor

_HUB_KWARGS = ("cache_dir", "force_download", "token", "revision", "local_files_only", "subfolder")


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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """The saved processor; for an image model's directory, its [`VideoMambaImageProcessor`].

        `AutoProcessor` reaches this class through the config class for image models too; giving back their
        image processor (as `AutoProcessor` does for other image models) beats a video processor built from
        the image processor's file.
        """
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}

        def has(name):
            return cached_file(
                pretrained_model_name_or_path, name, _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False, **hub_kwargs,
            ) is not None

        if not has(PROCESSOR_NAME) and not has(VIDEO_PROCESSOR_NAME) and has(IMAGE_PROCESSOR_NAME):
            from .image_processing_videomamba import VideoMambaImageProcessor  # needs pillow: only for image models

            return VideoMambaImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        """`processor_config.json`, plus the per-frame image processor that lets pipelines batch (see
        `save_frame_image_processor`)."""
        save_frame_image_processor(self.video_processor, save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

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
            raise TypeError(
                "video_processor must be a VideoProcessorMixin (e.g. VideoMambaVideoProcessor), "
                f"got {type(argument).__name__}."
            )
        return VideoProcessorMixin

    @property
    def model_input_names(self):
        return list(self.video_processor.model_input_names)


__all__ = ["VideoMambaProcessor"]
