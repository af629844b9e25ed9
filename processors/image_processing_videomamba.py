"""Image processor for VideoMamba's ImageNet (image) models: the original's evaluation transform.

The original evaluates ImageNet models as DeiT does: the shorter side resized (bicubic, on PIL images) to
`int(image_size / 0.875)`, a centre crop of `image_size`, then ImageNet mean/std normalisation. transformers'
PIL backend performs those steps, so this class sets its defaults and only rounds the crop offset as the
original does; it needs no torchvision.
"""

from .requirements import require

require("PIL", "VideoMambaImageProcessor")

from transformers.image_processing_backends import PilBackend  # noqa: E402
from transformers.image_utils import PILImageResampling  # noqa: E402

from .video_transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# Fraction of the resized image kept by the centre crop at evaluation (224 of 256).
EVAL_CROP_RATIO = 0.875


class VideoMambaImageProcessor(PilBackend):
    r"""
    Turns images (PIL, or arrays (H, W, C) / (C, H, W)) into `pixel_values` (batch, 3, height, width), float32
    with `return_tensors="pt"`, as the original VideoMamba evaluates its ImageNet models. Defaults are for a
    224 model; `from_model_config` sizes it for a [`VideoMambaConfig`].
    """

    resample = PILImageResampling.BICUBIC
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    size = {"shortest_edge": int(224 / EVAL_CROP_RATIO)}
    crop_size = {"height": 224, "width": 224}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def center_crop(self, image, size, **kwargs):
        """(C, H, W) -> (C, size.height, size.width). Odd margins are split as the original's (torchvision's)
        CenterCrop does, `round(margin / 2)`, which puts the window one pixel lower or further right than
        transformers' `margin // 2` when half the margin is k + 0.5 with k odd."""
        height, width = image.shape[-2:]
        if size.height is None or size.width is None or size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)  # its error for bad sizes, its padding for small images
        top, left = round((height - size.height) / 2), round((width - size.width) / 2)
        return image[..., top : top + size.height, left : left + size.width]

    @classmethod
    def for_video_processor(cls, video_processor):
        """The per-frame counterpart of a `VideoMambaVideoProcessor`'s evaluation transform (bilinear resize of
        the shorter side, centre crop, rescale, normalisation), for single frames of a video model.

        `save_pretrained` of the video processor writes it beside its own file: transformers' pipelines batch
        (`batch_size > 1`) only with an image processor or feature extractor loaded, not a video processor.
        """
        return cls(
            resample=PILImageResampling.BILINEAR,
            do_resize=video_processor.do_resize,
            size=dict(video_processor.size),
            do_center_crop=video_processor.do_center_crop,
            crop_size=dict(video_processor.crop_size),
            do_rescale=video_processor.do_rescale,
            rescale_factor=video_processor.rescale_factor,
            do_normalize=video_processor.do_normalize,
            image_mean=list(video_processor.image_mean),
            image_std=list(video_processor.image_std),
        )

    @classmethod
    def from_model_config(cls, config, **kwargs):
        """A processor for a `VideoMambaConfig`'s `image_size`: resize to image_size / 0.875, crop image_size."""
        side = config.image_size
        defaults = {"size": {"shortest_edge": int(side / EVAL_CROP_RATIO)}, "crop_size": {"height": side, "width": side}}
        return cls(**{**defaults, **kwargs})


__all__ = ["EVAL_CROP_RATIO", "VideoMambaImageProcessor"]
