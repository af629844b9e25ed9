"""Video decoding, video and image processors and processor for VideoMamba (installed as `modeling_videomamba.processors`)."""

from .datasets_videomamba import dataset_video_transform, undecoded_videos, video_cell_source
from .image_processing_videomamba import VideoMambaImageProcessor
from .multi_view import multi_view_predict
from .processing_videomamba import VideoMambaProcessor
from .processing_videomamba_video_text import VideoMambaVideoTextProcessor
from .video_decoding import (
    VideoDecodingError,
    VideoDecodingWarning,
    VideoInfo,
    read_video,
    sample_frame_indices,
    segment_indices,
    stride_indices,
)
from .video_processing_videomamba import VideoMambaVideoProcessor

__all__ = [
    "VideoDecodingError",
    "VideoDecodingWarning",
    "VideoInfo",
    "VideoMambaImageProcessor",
    "VideoMambaProcessor",
    "VideoMambaVideoProcessor",
    "VideoMambaVideoTextProcessor",
    "dataset_video_transform",
    "multi_view_predict",
    "read_video",
    "sample_frame_indices",
    "segment_indices",
    "stride_indices",
    "undecoded_videos",
    "video_cell_source",
]
