"""Configuration of the VideoMamba video-text model (the paper's UMT-style multimodal model)."""

import copy

from transformers import BertConfig, PreTrainedConfig

from .configuration_videomamba import PRESETS, VideoMambaConfig

POOLINGS = ("cls+avg", "avg", "cls")

# Written into every saved config so that a saved directory loads with `trust_remote_code=True`.
AUTO_MAP = {
    "AutoConfig": "configuration_videomamba_video_text.VideoMambaVideoTextConfig",
    "AutoModel": "modeling_videomamba_video_text.VideoMambaVideoTextModel",
}


class VideoMambaVideoTextConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoMambaVideoTextModel`]: a VideoMamba video encoder, a BERT text encoder whose upper
    layers cross-attend to the video (the fusion encoder), projections into a joint space and a matching head.

    Args:
        vision_config (`VideoMambaConfig` or `dict`, *optional*): The video encoder; defaults to the paper's
            "middle" size (width 576, 32 blocks, 8 frames of 224 px), the released video-text checkpoints' size.
        text_config (`BertConfig` or `dict`, *optional*): The text encoder; defaults to BERT-base's configuration.
            `is_decoder` and `add_cross_attention` are ignored: `fusion_layer` decides which layers cross-attend.
        fusion_layer (`int`, *optional*, defaults to 9): Text layers `[0, fusion_layer)` are text-only (they make the
            text embedding); layers `[fusion_layer, num_hidden_layers)` add cross-attention to the video tokens and
            only run for video-text matching.
        projection_dim (`int`, *optional*, defaults to 512): Width of the joint video-text space.
        keep_temporal (`bool`, *optional*, defaults to `True`): Pool one video vector per temporal position (the
            similarity is then the mean over frames of the per-frame cosine), as every zero-shot configuration of the
            original; `False` pools over the whole clip.
        pooling (`str`, *optional*, defaults to `"cls+avg"`): What `pool_norm` normalises: the cls token plus the mean
            of the patch tokens (`"cls+avg"`), the mean alone (`"avg"`) or the cls token alone (`"cls"`, one vector
            per clip whatever `keep_temporal`).
        pool_norm_eps (`float`, *optional*, defaults to 1e-5): Epsilon of the pooling LayerNorm.
        initial_temperature (`float`, *optional*, defaults to 0.07): Initial value of the learned contrastive temperature.
        min_temperature, max_temperature (`float`): Range the temperature is clamped to before each training loss,
            as the original (0.001, 0.5).
        contrastive_loss_weight, matching_loss_weight (`float`, *optional*, default to 1.0): Weights of the
            video-text contrastive and matching losses in `loss`.
        hard_negatives (`bool`, *optional*, defaults to `True`): Draw the matching loss's negatives in proportion to
            their contrastive similarity (the original's `vtm_hard_neg`), else uniformly.
    """

    model_type = "videomamba_video_text"
    sub_configs_defaults = {"vision_config": VideoMambaConfig, "text_config": BertConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        fusion_layer=9,
        projection_dim=512,
        keep_temporal=True,
        pooling="cls+avg",
        pool_norm_eps=1e-5,
        initial_temperature=0.07,
        min_temperature=0.001,
        max_temperature=0.5,
        contrastive_loss_weight=1.0,
        matching_loss_weight=1.0,
        hard_negatives=True,
        initializer_range=0.02,
        **kwargs,
    ):
        self.vision_config = _as_config(vision_config, VideoMambaConfig, "vision_config", PRESETS["middle"])
        self.text_config = _as_config(text_config, BertConfig, "text_config", {})
        self.fusion_layer = fusion_layer
        self.projection_dim = projection_dim
        self.keep_temporal = keep_temporal
        self.pooling = pooling
        self.pool_norm_eps = pool_norm_eps
        self.initial_temperature = initial_temperature
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.contrastive_loss_weight = contrastive_loss_weight
        self.matching_loss_weight = matching_loss_weight
        self.hard_negatives = hard_negatives
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self._validate()

    def _validate(self):
        layers = self.text_config.num_hidden_layers
        if not isinstance(self.fusion_layer, int) or not 0 <= self.fusion_layer < layers:
            raise ValueError(
                f"fusion_layer must be an integer in [0, {layers}) (the text config's num_hidden_layers), "
                f"got {self.fusion_layer!r}."
            )
        if not isinstance(self.projection_dim, int) or self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be a positive integer, got {self.projection_dim!r}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        if not 0 < self.min_temperature <= self.initial_temperature <= self.max_temperature:
            raise ValueError(
                f"Expected 0 < min_temperature <= initial_temperature <= max_temperature, got {self.min_temperature}, "
                f"{self.initial_temperature}, {self.max_temperature}."
            )
        if self.vision_config.modality != "video":
            raise ValueError(f"vision_config must be a video model (modality 'video'), got {self.vision_config.modality!r}.")


def _as_config(value, config_class, name, defaults):
    """A sub-config from None (the defaults), a dict, or a config of the right class (copied)."""
    if value is None:
        return config_class(**defaults)
    if isinstance(value, dict):
        return config_class(**value)
    if isinstance(value, config_class):
        return copy.deepcopy(value)
    raise TypeError(f"{name} must be a {config_class.__name__} or a dict, got {type(value).__name__}.")


__all__ = ["VideoMambaVideoTextConfig"]
