"""Video decoding, video and image processors and processor for VideoMamba (installed as `modeling_videomamba.processors`)."""

from .datasets_videomamba import dataset_video_transform, undecoded_videos, video_cell_source
from .frame_sampling import FrameTimeline, fps_times, segment_times
from .image_processing_videomamba import VideoMambaImageProcessor
from .long_video import classify_long_video, window_spans
from .multi_view import multi_view_predict
from .processing_videomamba import VideoMambaProcessor
from .processing_videomamba_video_text import VideoMambaVideoTextProcessor
from .video_decoding import (
    VideoDecodingError,
    VideoDecodingWarning,
    VideoInfo,
    VideoReader,
    read_video,
    sample_frame_indices,
    segment_indices,
    stride_indices,
)
from .video_processing_videomamba import TimedVideoMetadata, VideoMambaVideoProcessor

__all__ = [
    "FrameTimeline",
    "TimedVideoMetadata",
    "VideoDecodingError",
    "VideoDecodingWarning",
    "VideoInfo",
    "VideoMambaImageProcessor",
    "VideoMambaProcessor",
    "VideoMambaVideoProcessor",
    "VideoReader",
    "classify_long_video",
    "VideoMambaVideoTextProcessor",
    "dataset_video_transform",
    "fps_times",
    "multi_view_predict",
    "read_video",
    "sample_frame_indices",
    "segment_indices",
    "segment_times",
    "stride_indices",
    "window_spans",
    "undecoded_videos",
    "video_cell_source",
]
