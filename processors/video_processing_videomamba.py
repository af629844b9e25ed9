"""Video processor for VideoMamba: decode, sample frames, resize, crop and normalise into `pixel_values`.

It follows transformers' video-processor interface (`__call__(videos, num_frames=..., do_sample_frames=...,
return_tensors=...)`, `save_pretrained`/`from_pretrained` through `video_preprocessor_config.json`,
`AutoVideoProcessor`), but subclasses `VideoProcessorMixin` rather than `BaseVideoProcessor`, which needs
torchvision: decoding is PyAV (`video_decoding.py`) and the transforms are torch (`video_transforms.py`).
This file imports its siblings only relatively, so `save_pretrained` can copy it for `trust_remote_code`.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from .frame_sampling import SAMPLING_MODES, FrameTimeline, fps_times, sample_frame_indices
from .video_decoding import is_video_source, read_video
from .video_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    horizontal_flip,
    random_resized_crop,
    rescale_and_normalize,
    resize_shortest_edge,
    three_crops,
)


class VideoMambaVideoProcessorKwargs(VideosKwargs, total=False):
    """The call/`from_pretrained` options beyond transformers' `VideosKwargs` (see the class docstring)."""

    sampling: str
    frame_stride: int
    num_temporal_clips: int
    num_spatial_crops: int
    train_crop_scale: tuple
    train_crop_ratio: tuple
    train_flip: bool
    keep_coded_frames: bool


_CALL_OPTIONS = (
    "num_frames", "fps", "do_sample_frames", "sampling", "frame_stride", "num_temporal_clips", "num_spatial_crops",
    "keep_coded_frames",
    "do_resize", "size", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "train_crop_scale", "train_crop_ratio", "train_flip",
)


@dataclass
class TimedVideoMetadata(VideoMetadata):
    """transformers' `VideoMetadata` whose `timestamps` are the sampled frames' presentation times.

    transformers computes `timestamps` as `frames_indices / fps`, which is wrong for variable-frame-rate
    videos; here they are the frames' own times (seconds from the first frame), `frames_timestamps`.
    """

    frames_timestamps: Optional[list] = field(default=None)

    @property
    def timestamps(self):
        if self.frames_timestamps is None:
            return super().timestamps
        return list(self.frames_timestamps)


def save_frame_image_processor(video_processor, save_directory):
    """Write `VideoMambaImageProcessor.for_video_processor(video_processor)` into `save_directory`.

    transformers' pipelines collate batches only when they hold a tokenizer, feature extractor or image
    processor; the video-classification pipeline loads an image processor from the model directory when
    there is one (and still preprocesses with the video processor), so this file makes `batch_size > 1`
    work. Skipped (batching then needs `image_processor=` given to `pipeline`) where pillow is missing.
    """
    try:
        from .image_processing_videomamba import VideoMambaImageProcessor
    except ImportError:
        return
    VideoMambaImageProcessor.for_video_processor(video_processor).save_pretrained(save_directory)


def _size_dict(size, keys):
    if isinstance(size, int):
        return {key: size for key in keys}
    if isinstance(size, dict) and set(size) == set(keys) and all(isinstance(size[k], int) and size[k] > 0 for k in keys):
        return dict(size)
    raise ValueError(f"Expected a positive int or a dict with keys {list(keys)}, got {size!r}.")


def _is_frame(frame):
    """A single image: a PIL image or an array/tensor (H, W, C) / (C, H, W)."""
    return (hasattr(frame, "mode") and hasattr(frame, "size")) or (
        isinstance(frame, (np.ndarray, torch.Tensor)) and frame.ndim == 3
    )


def _to_frame_array(frame):
    if hasattr(frame, "convert") and hasattr(frame, "mode"):  # PIL: any mode -> RGB
        return np.asarray(frame.convert("RGB"))
    return frame.numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)


def _split_videos(videos):
    """A batch as a list of videos, each a source (path, bytes, file), an array (T, ...) or a frame list."""
    if is_video_source(videos):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            f"A video array must be (T, H, W, C) or (T, C, H, W), or 5-D for a batch; got shape {tuple(videos.shape)}."
        )
    if isinstance(videos, (list, tuple)) and videos:
        if all(_is_frame(frame) for frame in videos):
            return [list(videos)]
        return list(videos)
    empty = " (empty)" if isinstance(videos, (list, tuple)) else ""
    raise ValueError(
        "Expected videos as a path, bytes, a file object, an array (T, H, W, C) or (T, C, H, W), a list of "
        f"frames, or a list of those; got {type(videos).__name__}{empty}."
    )


def _split_metadata(video_metadata, num_videos):
    """One metadata mapping (or None) per video from None, a mapping, or a list of mappings."""
    if video_metadata is None:
        return [None] * num_videos
    if isinstance(video_metadata, (dict, VideoMetadata)):
        video_metadata = [video_metadata]
    video_metadata = list(video_metadata)
    if len(video_metadata) != num_videos or not all(isinstance(m, (dict, VideoMetadata)) for m in video_metadata):
        raise ValueError(
            f"video_metadata must be a VideoMetadata or dict per video ({num_videos} videos); got {video_metadata!r}."
        )
    return video_metadata


def _array_timeline(num_frames, video_metadata, needs_fps):
    """(FrameTimeline, fps or None) of an array video; its frames are at `frames_indices` / `fps` seconds.

    Without an fps the timeline is regular in frames (time-based and index-based sampling then agree).
    """
    fps = video_metadata.get("fps") if video_metadata is not None else None
    if fps is None:
        if needs_fps:
            raise ValueError(
                "fps sampling of an array video needs its frame rate: pass video_metadata={'fps': ...} "
                "(a transformers VideoMetadata or a dict), or sample by num_frames."
            )
        return FrameTimeline.regular(num_frames, 1.0), None
    held = video_metadata.get("frames_indices")
    if held is None:
        return FrameTimeline.regular(num_frames, float(fps)), float(fps)
    if len(held) != num_frames:
        raise ValueError(f"video_metadata has {len(held)} frames_indices for a video of {num_frames} frames.")
    return FrameTimeline.from_timestamps(np.asarray(held, dtype=np.float64) / fps, fps), float(fps)


def _channels_first(video, input_data_format):
    """(T, C, H, W) tensor with 3 channels from an array/tensor (T, H, W, C) or (T, C, H, W).

    uint8 stays uint8 (resizing uint8 is several times cheaper than converting full frames to float first);
    other dtypes become float32.
    """
    video = torch.as_tensor(np.ascontiguousarray(video) if isinstance(video, np.ndarray) else video)
    if video.ndim != 4:
        raise ValueError(f"A video must have 4 dimensions (T, H, W, C) or (T, C, H, W); got shape {tuple(video.shape)}.")
    if video.shape[0] == 0:
        raise ValueError(f"A video needs at least one frame; got an array of shape {tuple(video.shape)}.")
    if input_data_format is None:
        last, first = video.shape[-1] in (1, 3, 4), video.shape[1] in (1, 3, 4)
        if not (last or first):
            raise ValueError(
                f"Cannot find the channel axis (1, 3 or 4 channels) of a video of shape {tuple(video.shape)}."
            )
        input_data_format = "channels_last" if last else "channels_first"
    input_data_format = getattr(input_data_format, "value", input_data_format)  # a transformers ChannelDimension
    if input_data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"input_data_format must be 'channels_last' or 'channels_first', got {input_data_format!r}.")
    if input_data_format == "channels_last":
        video = video.permute(0, 3, 1, 2)
    channels = video.shape[1]
    if channels == 1:
        video = video.expand(-1, 3, -1, -1)
    elif channels == 4:  # drop alpha
        video = video[:, :3]
    elif channels != 3:
        raise ValueError(f"Expected 1, 3 or 4 channels, got {channels} (video of shape {tuple(video.shape)}).")
    return video if video.dtype == torch.uint8 else video.to(torch.float32)


class VideoMambaVideoProcessor(VideoProcessorMixin):
    r"""
    Turns videos into VideoMamba's `pixel_values` (batch, frames, 3, height, width), float32.

    Evaluation (default): `num_frames` frames by segment sampling (the middle frame of each of `num_frames`
    equal segments) or fixed-stride sampling, shorter side resized to `size["shortest_edge"]` (bilinear,
    antialiased), centre crop `crop_size`, rescale by 1/255, ImageNet normalisation. Training
    (`training=True` in the call): a random frame per segment (or a random stride start), one random
    resized crop per clip and a random horizontal flip. Multi-view evaluation: `num_temporal_clips` clips
    x `num_spatial_crops` (1 or 3) crops per video, returned as consecutive rows (batch * views, ...) with
    `num_views` in the output (see `multi_view_predict`).

    Args:
        num_frames (`int`, defaults to 8): frames per clip (the model config's `num_frames`).
        fps (`float`, *optional*): sample one frame every `1 / fps` seconds over the whole video instead of
            `num_frames` frames (transformers' `fps=`); needs the video's timing (files have it, arrays need
            `video_metadata` with `fps`). Given in a call together with `num_frames`, it is an error.
        do_sample_frames (`bool`, defaults to True): sample frames; if False, array videos are used whole and
            decoded files give all their frames.
        sampling (`str`, defaults to `"segment"`): `"segment"` (VideoMamba; on presentation times, so
            variable-frame-rate files are sampled evenly in time) or `"stride"` (VideoMAE; in frames).
        frame_stride (`int`, defaults to 4): frame gap of `"stride"` sampling.
        num_temporal_clips (`int`, defaults to 1), num_spatial_crops (`int`, 1 or 3, defaults to 1): views.
        do_resize, size (`{"shortest_edge": 224}`), do_center_crop, crop_size (`{"height": 224, "width": 224}`),
        do_rescale, rescale_factor (1/255), do_normalize, image_mean, image_std (ImageNet): as in transformers.
        train_crop_scale ((0.08, 1.0)), train_crop_ratio ((3/4, 4/3)), train_flip (True): training
            augmentation (set `train_flip=False` for direction-sensitive data such as Something-Something).
        keep_coded_frames (`bool`, defaults to False): decoded files keep their coded frames, without the
            display rotation/flip and the sample-aspect-ratio stretch that players apply (and we by default).
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = VideoMambaVideoProcessorKwargs

    def __init__(
        self,
        num_frames=8,
        fps=None,
        do_sample_frames=True,
        sampling="segment",
        frame_stride=4,
        num_temporal_clips=1,
        num_spatial_crops=1,
        do_resize=True,
        size=None,
        do_center_crop=True,
        crop_size=None,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        train_crop_scale=(0.08, 1.0),
        train_crop_ratio=(3 / 4, 4 / 3),
        train_flip=True,
        keep_coded_frames=False,
        **kwargs,
    ):
        kwargs.pop("video_processor_type", None)  # written by `to_dict`, it names this class
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.fps = fps
        self.do_sample_frames = do_sample_frames
        self.sampling = sampling
        self.frame_stride = frame_stride
        self.num_temporal_clips = num_temporal_clips
        self.num_spatial_crops = num_spatial_crops
        self.do_resize = do_resize
        self.size = _size_dict(size if size is not None else 224, ("shortest_edge",))
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict(crop_size if crop_size is not None else 224, ("height", "width"))
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.train_crop_scale = list(train_crop_scale)
        self.train_crop_ratio = list(train_crop_ratio)
        self.train_flip = train_flip
        self.keep_coded_frames = keep_coded_frames
        self._validate(self._options({}))

    @classmethod
    def from_model_config(cls, config, **kwargs):
        """A processor matching a `VideoMambaConfig`: its `num_frames`, and `image_size` as resize and crop."""
        defaults = {"num_frames": config.num_frames, "size": config.image_size, "crop_size": config.image_size}
        return cls(**{**defaults, **kwargs})

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        """Save `video_preprocessor_config.json`, and the per-frame image processor (`preprocessor_config.json`)
        that lets `pipeline("video-classification", batch_size=...)` batch (see `save_frame_image_processor`)."""
        save_frame_image_processor(self, save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def _options(self, overrides):
        options = {name: getattr(self, name) for name in _CALL_OPTIONS}
        options.update({name: value for name, value in overrides.items() if value is not None})
        options["size"] = _size_dict(options["size"], ("shortest_edge",))
        options["crop_size"] = _size_dict(options["crop_size"], ("height", "width"))
        return options

    @staticmethod
    def _validate(options):
        for name in ("num_frames", "frame_stride", "num_temporal_clips"):
            if not isinstance(options[name], int) or isinstance(options[name], bool) or options[name] <= 0:
                raise ValueError(f"{name} must be a positive integer, got {options[name]!r}.")
        fps = options["fps"]
        if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0):
            raise ValueError(f"fps must be a positive number or None, got {fps!r}.")
        if fps is not None and options["num_temporal_clips"] != 1:
            raise ValueError("fps sampling takes the whole video: it cannot be combined with num_temporal_clips > 1.")
        if options["sampling"] not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {options['sampling']!r}.")
        if options["num_spatial_crops"] not in (1, 3):
            raise ValueError(f"num_spatial_crops must be 1 or 3, got {options['num_spatial_crops']!r}.")
        if options["num_spatial_crops"] == 3 and not options["do_resize"]:
            raise ValueError("num_spatial_crops=3 needs do_resize=True (the crops are taken after the resize).")
        for name in ("image_mean", "image_std"):
            if len(options[name]) != 3:
                raise ValueError(f"{name} needs one value per RGB channel, got {options[name]!r}.")

    def __call__(self, videos, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(
        self, videos, training=False, generator=None, input_data_format=None, return_tensors=None,
        return_metadata=False, video_metadata=None, **kwargs,
    ):
        """Process a video or a batch of videos.

        Args:
            videos: a path (any FFmpeg container), bytes, a binary file object, an array/tensor (T, H, W, C)
                or (T, C, H, W) (uint8 0-255, or float with `do_rescale=False` for 0-1 values), a list of frames
                (PIL images or (H, W, C) arrays), or a list/5-D array of such videos (sizes and lengths may differ).
            training (`bool`): random sampling and augmentation instead of the deterministic evaluation views.
            generator (`np.random.Generator` or `int` seed): randomness for `training`.
            input_data_format: `"channels_last"` or `"channels_first"` for array inputs (inferred if None).
            return_tensors: `"pt"` (default when None) or `"np"`.
            return_metadata (`bool`): also return `video_metadata`, one `TimedVideoMetadata` (a transformers
                `VideoMetadata`) per video: `total_num_frames`, `fps`, `duration` (s), `height`/`width` of the
                frames before resizing, `frames_indices` and `timestamps` (s) of the sampled frames, in the
                order of the output rows.
            video_metadata: for array/frame-list videos, a `VideoMetadata` or dict (or one per video) with
                the video's `fps` and, if the array holds only some frames of a video, their
                `frames_indices`; this times the frames for `fps=` sampling and time-based segments.
            kwargs: per-call overrides of the constructor's options (`num_frames`, `fps`, `do_sample_frames`, ...).
        Returns:
            `BatchFeature` with `pixel_values` (batch * views, T, 3, H, W) float32 (T = `num_frames`, or the
            count `fps` gives), plus `num_views` (an int) when there is more than one view per video and
            `video_metadata` (a list) when `return_metadata`.
        """
        unknown = sorted(set(kwargs) - set(_CALL_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unexpected arguments {unknown} for {type(self).__name__}; accepted: {list(_CALL_OPTIONS)}."
            )
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        if kwargs.get("fps") is not None and kwargs.get("num_frames") is not None:
            raise ValueError("num_frames and fps are mutually exclusive: pass one of them.")
        options = self._options(kwargs)
        if kwargs.get("num_frames") is not None:  # a call's num_frames beats a constructor's fps
            options["fps"] = None
        self._validate(options)
        if training and (options["num_temporal_clips"] > 1 or options["num_spatial_crops"] > 1):
            raise ValueError(
                "Multi-view outputs (num_temporal_clips/num_spatial_crops > 1) are for evaluation, not training."
            )
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)

        videos = _split_videos(videos)
        metadata = _split_metadata(video_metadata, len(videos))
        views, metadata_out = [], []
        for video, video_meta in zip(videos, metadata):
            clips, meta = self._sample_clips(video, options, training, rng, input_data_format, video_meta)
            views.extend(view for clip in clips for view in self._transform(clip, options, training, rng))
            metadata_out.append(meta)
        if len({tuple(view.shape) for view in views}) > 1:
            raise ValueError(
                "Videos end up with different shapes and cannot be batched: "
                f"{sorted({tuple(v.shape) for v in views})}. Sample frames (do_sample_frames=True) and crop."
            )
        pixel_values = torch.stack(views)
        data = {"pixel_values": pixel_values.numpy() if return_tensors == "np" else pixel_values}
        num_views = options["num_temporal_clips"] * options["num_spatial_crops"]
        if num_views > 1:
            data["num_views"] = num_views
        if return_metadata:
            data["video_metadata"] = metadata_out
        return BatchFeature(data=data)

    def _sample_clips(self, video, options, training, rng, input_data_format, video_metadata):
        """Clips (T, C, H, W) (uint8 for decoded input) of one video, one per temporal view, and its metadata."""
        num_clips = 1 if training else options["num_temporal_clips"]

        def sampler(timeline):
            if options["fps"] is not None:
                return fps_times(timeline, options["fps"], training=training, rng=rng)
            return sample_frame_indices(
                timeline.num_frames, options["num_frames"], sampling=options["sampling"],
                stride=options["frame_stride"], training=training, num_clips=num_clips, rng=rng, timeline=timeline,
            )

        if is_video_source(video):
            if video_metadata is not None:
                raise ValueError("video_metadata is for array videos; files are timed from their own timestamps.")
            if isinstance(video, str) and video.startswith(("http://", "https://")):
                raise ValueError(f"Download {video!r} first: this processor reads local files, bytes and file objects.")
            frames, info = read_video(
                video, sampler if options["do_sample_frames"] else None, keep_coded_frames=options["keep_coded_frames"]
            )
            frames = frames if options["do_sample_frames"] else frames[None]
            metadata = TimedVideoMetadata(
                total_num_frames=info.num_frames, fps=info.fps, width=info.width, height=info.height,
                duration=info.duration, video_backend="pyav", frames_indices=info.frame_indices.reshape(-1).tolist(),
                frames_timestamps=info.frame_timestamps.reshape(-1).tolist(),
            )
            return [_channels_first(clip, "channels_last") for clip in frames], metadata
        if isinstance(video, (list, tuple)):
            if not video or not all(_is_frame(frame) for frame in video):
                raise ValueError(
                    "A video given as a list must be a non-empty list of frames (PIL images or 3-D arrays)."
                )
            frames = [_to_frame_array(frame) for frame in video]
            shapes = sorted({frame.shape for frame in frames})
            if len(shapes) > 1:
                raise ValueError(f"The frames of one video must share one size; got frames of shapes {shapes}.")
            video = np.stack(frames)
        video = _channels_first(video, input_data_format)
        timeline, fps = _array_timeline(video.shape[0], video_metadata, options["fps"] is not None)
        indices = sampler(timeline) if options["do_sample_frames"] else np.arange(video.shape[0])[None]
        held = video_metadata.get("frames_indices") if video_metadata is not None else None
        held = np.asarray(held) if held is not None else None
        metadata = TimedVideoMetadata(
            total_num_frames=int((video_metadata or {}).get("total_num_frames") or video.shape[0]),
            fps=fps, width=video.shape[-1], height=video.shape[-2], duration=timeline.duration if fps else None,
            video_backend=None,
            frames_indices=(held[indices] if held is not None else indices).reshape(-1).tolist(),
            frames_timestamps=timeline.timestamps[indices].reshape(-1).tolist() if fps else None,
        )
        return [video[torch.from_numpy(clip)] for clip in indices], metadata

    def _transform(self, clip, options, training, rng):
        """The spatial views (each (T, C, H, W), normalised) of one clip."""
        height, width = options["crop_size"]["height"], options["crop_size"]["width"]
        if training:
            scale, ratio = options["train_crop_scale"], options["train_crop_ratio"]
            clip = random_resized_crop(clip, height, width, scale, ratio, rng)
            if options["train_flip"] and rng.random() < 0.5:
                clip = horizontal_flip(clip)
            views = [clip]
        else:
            if options["do_resize"]:
                clip = resize_shortest_edge(clip, options["size"]["shortest_edge"])
            if options["num_spatial_crops"] == 3:
                views = three_crops(clip, height, width)
            else:
                views = [center_crop(clip, height, width) if options["do_center_crop"] else clip]
        return [
            rescale_and_normalize(
                view.to(torch.float32),
                options["rescale_factor"] if options["do_rescale"] else None,
                options["image_mean"] if options["do_normalize"] else None,
                options["image_std"],
            ).contiguous()
            for view in views
        ]


__all__ = ["TimedVideoMetadata", "VideoMambaVideoProcessor", "VideoMambaVideoProcessorKwargs", "save_frame_image_processor"]
