"""PyTorch VideoMamba video-text model: the paper's UMT-style multimodal model (zero-shot retrieval).

A VideoMamba video encoder and a BERT text encoder (transformers' own BERT modules) meet in a joint space:
video and text are projected and L2-normalised, and their similarity is the mean over frames of the
per-frame cosine. The BERT layers from `fusion_layer` on cross-attend to the video tokens; run on the text
encoder's output they give the video-text matching (ITM) logits used to re-rank retrieval candidates.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertLayer
from transformers.utils import ModelOutput

from .configuration_videomamba_video_text import VideoMambaVideoTextConfig
from .modeling_videomamba import VideoMambaModel, VideoMambaModelOutput


@dataclass
class VideoMambaVideoTextOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, with `return_loss=True`):
        `contrastive_loss_weight * contrastive_loss + matching_loss_weight * matching_loss`.
    contrastive_loss, matching_loss (`torch.FloatTensor` of shape `()`, *optional*): The two parts of `loss`.
    logits_per_video (`torch.FloatTensor` of shape `(videos, texts)`):
        Similarity (mean over frames of the per-frame cosine) divided by the temperature.
    logits_per_text (`torch.FloatTensor` of shape `(texts, videos)`): `logits_per_video.t()`.
    video_embeds (`torch.FloatTensor` of shape `(videos, frames', projection_dim)`):
        L2-normalised projected video vectors; `frames'` is the number of temporal positions with
        `keep_temporal` (and `pooling != "cls"`), else 1.
    text_embeds (`torch.FloatTensor` of shape `(texts, projection_dim)`): L2-normalised projected [CLS] vectors.
    video_tokens (`torch.FloatTensor` of shape `(videos, frames' * h * w, vision hidden_size)`):
        Final-norm patch tokens (no cls), what the fusion layers cross-attend to.
    text_last_hidden_state (`torch.FloatTensor` of shape `(texts, length, text hidden_size)`):
        Output of the text-only layers `[0, fusion_layer)`.
    vision_model_output ([`VideoMambaModelOutput`]): The video encoder's output.
    """

    loss: torch.FloatTensor = None
    contrastive_loss: torch.FloatTensor = None
    matching_loss: torch.FloatTensor = None
    logits_per_video: torch.FloatTensor = None
    logits_per_text: torch.FloatTensor = None
    video_embeds: torch.FloatTensor = None
    text_embeds: torch.FloatTensor = None
    video_tokens: torch.FloatTensor = None
    text_last_hidden_state: torch.FloatTensor = None
    vision_model_output: VideoMambaModelOutput = None


@dataclass
class VideoMambaVideoEncoding(ModelOutput):
    r"""
    video_embeds (`(videos, frames', projection_dim)`): L2-normalised projected video vectors.
    video_tokens (`(videos, frames' * h * w, vision hidden_size)`): final-norm patch tokens, for matching.
    pooled_output (`(videos, frames', vision hidden_size)`): `pool_norm` output, before the projection.
    vision_model_output ([`VideoMambaModelOutput`]): the video encoder's output.
    """

    video_embeds: torch.FloatTensor = None
    video_tokens: torch.FloatTensor = None
    pooled_output: torch.FloatTensor = None
    vision_model_output: VideoMambaModelOutput = None


@dataclass
class VideoMambaTextEncoding(ModelOutput):
    r"""
    text_embeds (`(texts, projection_dim)`): L2-normalised projected [CLS] vectors.
    last_hidden_state (`(texts, length, text hidden_size)`): output of the text-only layers, for matching.
    """

    text_embeds: torch.FloatTensor = None
    last_hidden_state: torch.FloatTensor = None


def video_text_similarity(video_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Mean over frames of the per-frame cosine: (V, T, D) video and (N, D) text (both normalised) -> (V, N).

    Computed in (at least) float32, as the original's evaluation does.
    """
    if video_embeds.dim() == 2:
        video_embeds = video_embeds[:, None]
    if video_embeds.dim() != 3 or text_embeds.dim() != 2 or video_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            "Expected video embeddings (videos, frames, dim) and text embeddings (texts, dim) of the same dim; got "
            f"{tuple(video_embeds.shape)} and {tuple(text_embeds.shape)}."
        )
    dtype = torch.promote_types(video_embeds.dtype, torch.float32)
    # Autocast would run the einsum in half precision again.
    with torch.autocast(video_embeds.device.type, enabled=False):
        return torch.einsum("vtd,nd->vtn", video_embeds.to(dtype), text_embeds.to(dtype)).mean(1)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered tensor and keeps the local slice.

    Written with all_reduce, which every backend has (gloo has no reduce-scatter, which
    `torch.distributed.nn.all_gather` needs to be right there).
    """

    @staticmethod
    def forward(ctx, tensor):
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        ctx.rank, ctx.size = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (local batch first axis, the same size in every process) from every process, keeping
    the autograd graph.

    The backward sums every process's gradient into each local slice, so once DDP averages the parameter
    gradients they equal those of one process running the global batch. Outside a multi-process run the tensor
    is returned as is.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_world_size() == 1:
        return tensor
    if not tensor.requires_grad:
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)
    return _GatherWithGrad.apply(tensor)


def _positives(video_ids: torch.Tensor, size: int, device) -> torch.Tensor:
    """(size, size) float mask of matching pairs: equal `video_ids`, or the diagonal when ids are None."""
    if video_ids is None:
        return torch.eye(size, device=device)
    video_ids = video_ids.reshape(-1, 1).to(device)
    return (video_ids == video_ids.t()).float()


def video_text_contrastive_loss(video_embeds, text_embeds, temperature, video_ids=None, gather=True) -> torch.Tensor:
    """Symmetric InfoNCE over the (global) batch, the original's VTC loss.

    Args:
        video_embeds (`(B, T, D)`), text_embeds (`(B, D)`): normalised embeddings of matching pairs (row i with row i).
        temperature (`torch.Tensor` of shape `()`): the similarity is divided by it.
        video_ids (`(B,)`, *optional*): pairs with equal ids count as positives (several captions of a video);
            the targets are spread evenly over them. None: only the diagonal.
        gather: gather the embeddings (with gradient) from every process first, as the original.
    """
    if gather:
        video_embeds, text_embeds = gather_with_grad(video_embeds), gather_with_grad(text_embeds)
        if video_ids is not None:
            video_ids = gather_with_grad(video_ids)
    logits = video_text_similarity(video_embeds, text_embeds) / temperature
    targets = _positives(video_ids, logits.shape[0], logits.device)
    targets = targets / targets.sum(1, keepdim=True)
    video_to_text = -(F.log_softmax(logits, dim=1) * targets).sum(1).mean()
    text_to_video = -(F.log_softmax(logits.t(), dim=1) * targets).sum(1).mean()
    return (video_to_text + text_to_video) / 2


class VideoMambaVideoTextPreTrainedModel(PreTrainedModel):
    config_class = VideoMambaVideoTextConfig
    config: VideoMambaVideoTextConfig
    base_model_prefix = "videomamba_video_text"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["VideoMambaEmbeddings", "VideoMambaLayer", "BertEmbeddings", "BertLayer"]
    _keep_in_fp32_modules_strict = ["A_log", "A_b_log", "D", "D_b"]

    @torch.no_grad()
    def _init_weights(self, module):
        """The heads' init; the video and text encoders are sub-models and initialise themselves."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VideoMambaVideoTextModel):
            init.constant_(module.temp, self.config.initial_temperature)


def _fusion_layer(text_config, vision_width: int, layer_idx: int) -> BertLayer:
    """A BERT layer with cross-attention to the video tokens (self-attention -> cross-attention -> feed-forward).

    transformers only builds a BERT layer's cross-attention for decoder configs, and gives it keys and values
    of the text width; here the self-attention stays bidirectional and the keys and values read the video width.
    """
    layer_config = copy.deepcopy(text_config)
    layer_config.is_decoder, layer_config.add_cross_attention = True, True
    layer = BertLayer(layer_config, layer_idx=layer_idx)
    layer.attention.self.is_causal = False
    cross = layer.crossattention.self
    cross.key = nn.Linear(vision_width, cross.all_head_size)
    cross.value = nn.Linear(vision_width, cross.all_head_size)
    # The attention implementation is read from the config at run time: share the text model's.
    for submodule in layer.modules():
        if getattr(submodule, "config", None) is layer_config:
            submodule.config = text_config
    return layer


class VideoMambaVideoTextModel(VideoMambaVideoTextPreTrainedModel):
    """VideoMamba video encoder + BERT text/fusion encoder, contrastive (retrieval) and matching heads.

    Parameter names: `vision_model.*` (a [`VideoMambaModel`]), `text_model.*` (a `BertModel` without pooler whose
    layers from `fusion_layer` on have `crossattention`), `pool_norm`, `vision_proj`, `text_proj`, `itm_head`, `temp`.
    """

    def __init__(self, config: VideoMambaVideoTextConfig):
        super().__init__(config)
        vision_width = config.vision_config.hidden_size
        text_config = copy.deepcopy(config.text_config)
        text_config.is_decoder, text_config.add_cross_attention = False, False
        self.vision_model = VideoMambaModel(config.vision_config)
        self.text_model = BertModel(text_config, add_pooling_layer=False)
        layers = self.text_model.encoder.layer
        for idx in range(config.fusion_layer, len(layers)):
            layers[idx] = _fusion_layer(self.text_model.config, vision_width, idx)
        self.pool_norm = nn.LayerNorm(vision_width, eps=config.pool_norm_eps)
        self.vision_proj = nn.Linear(vision_width, config.projection_dim)
        self.text_proj = nn.Linear(text_config.hidden_size, config.projection_dim)
        self.itm_head = nn.Linear(text_config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(config.initial_temperature))
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    # ------------------------------------------------------------------------------------------------
    # Video
    # ------------------------------------------------------------------------------------------------

    def _pool(self, cls: torch.Tensor, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """cls (B, 1, C) and patch tokens (B, T'*h*w, C) -> pool_norm input pooled as configured, (B, T' or 1, C)."""
        pooling, batch, width = self.config.pooling, tokens.shape[0], tokens.shape[-1]
        if pooling == "cls":
            return self.pool_norm(cls)
        if self.config.keep_temporal:
            mean = tokens.reshape(batch, frames, -1, width).mean(2)
        else:
            mean = tokens.mean(1, keepdim=True)
        return self.pool_norm(cls + mean if pooling == "cls+avg" else mean)

    def encode_video(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> VideoMambaVideoEncoding:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(videos, frames, channels, height, width)`): processed clips.

        Returns a [`VideoMambaVideoEncoding`]: normalised `video_embeds` (videos, frames', projection_dim) and the
        `video_tokens` (videos, frames'*h*w, C) that `video_text_matching` cross-attends to.
        """
        if pixel_values is None or pixel_values.dim() != 5:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"pixel_values must be (videos, frames, channels, height, width); got {shape}.")
        outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        hidden = outputs.last_hidden_state
        cls, tokens = hidden[:, :1], hidden[:, 1:]
        frames = pixel_values.shape[1] // self.config.vision_config.tubelet_size
        pooled = self._pool(cls, tokens, frames)
        video_embeds = F.normalize(self.vision_proj(pooled), dim=-1)
        return VideoMambaVideoEncoding(
            video_embeds=video_embeds, video_tokens=tokens, pooled_output=pooled, vision_model_output=outputs
        )

    def get_video_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(videos, frames, C, H, W) -> L2-normalised video embeddings (videos, frames', projection_dim)."""
        return self.encode_video(pixel_values, interpolate_pos_encoding).video_embeds

    # ------------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------------

    def _self_attention_mask(self, attention_mask, hidden):
        if attention_mask is not None and attention_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"attention_mask must be (texts, length) = {tuple(hidden.shape[:2])}; got {tuple(attention_mask.shape)}."
            )
        return create_bidirectional_mask(config=self.text_model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> VideoMambaTextEncoding:
        r"""
        input_ids (`torch.LongTensor` of shape `(texts, length)`): tokenised captions, [CLS] first.
        attention_mask (`torch.LongTensor` of shape `(texts, length)`, *optional*): 1 for tokens, 0 for padding.

        Runs the text-only layers `[0, fusion_layer)`; [CLS] -> `text_proj` -> L2 normalisation.
        """
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be (texts, length); got {shape}.")
        hidden = self.text_model.embeddings(input_ids=input_ids)
        mask = self._self_attention_mask(attention_mask, hidden)
        for layer in self.text_model.encoder.layer[: self.config.fusion_layer]:
            hidden = layer(hidden, mask)
        text_embeds = F.normalize(self.text_proj(hidden[:, 0]), dim=-1)
        return VideoMambaTextEncoding(text_embeds=text_embeds, last_hidden_state=hidden)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> torch.Tensor:
        """(texts, length) token ids -> L2-normalised text embeddings (texts, projection_dim)."""
        return self.encode_text(input_ids, attention_mask).text_embeds

    # ------------------------------------------------------------------------------------------------
    # Matching
    # ------------------------------------------------------------------------------------------------

    def match_pairs(self, video_tokens, text_hidden_states, attention_mask=None) -> torch.Tensor:
        """ITM logits of aligned pairs: video tokens (P, Lv, C), text-layer output (P, L, H), mask (P, L) -> (P, 2).

        Runs the fusion layers `[fusion_layer, num_hidden_layers)` (self-attention over the text, cross-attention to
        the video tokens, feed-forward); [CLS] -> `itm_head`. Class 1 means "match"; its raw logit ranks candidates.
        """
        if video_tokens.shape[0] != text_hidden_states.shape[0]:
            raise ValueError(
                f"match_pairs takes aligned pairs: got {video_tokens.shape[0]} videos and {text_hidden_states.shape[0]} texts."
            )
        hidden = text_hidden_states
        mask = self._self_attention_mask(attention_mask, hidden)
        video_tokens = video_tokens.to(hidden.dtype)
        for layer in self.text_model.encoder.layer[self.config.fusion_layer :]:
            hidden = layer(hidden, mask, video_tokens)
        return self.itm_head(hidden[:, 0])

    def video_text_matching(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        video_tokens=None,
        text_hidden_states=None,
    ) -> torch.Tensor:
        r"""
        ITM logits for every (video, text) pair, (videos, texts, 2); class 1 = match.

        Videos come from `pixel_values` (videos, frames, C, H, W) or precomputed `video_tokens` (videos, Lv, C)
        (`encode_video(...).video_tokens`); texts from `input_ids` or precomputed `text_hidden_states`
        (`encode_text(...).last_hidden_state`), with their `attention_mask` (texts, length).
        """
        if (pixel_values is None) == (video_tokens is None):
            raise ValueError("Pass exactly one of pixel_values and video_tokens.")
        if (input_ids is None) == (text_hidden_states is None):
            raise ValueError("Pass exactly one of input_ids and text_hidden_states.")
        if video_tokens is None:
            video_tokens = self.encode_video(pixel_values).video_tokens
        if text_hidden_states is None:
            text_hidden_states = self.encode_text(input_ids, attention_mask).last_hidden_state
        texts = text_hidden_states.shape[0]
        rows = []
        for tokens in video_tokens:  # one video at a time against every text keeps memory at texts x Lv
            expanded = tokens[None].expand(texts, -1, -1)
            rows.append(self.match_pairs(expanded, text_hidden_states, attention_mask))
        return torch.stack(rows)

    # ------------------------------------------------------------------------------------------------
    # Training loss and forward
    # ------------------------------------------------------------------------------------------------

    def _matching_loss(self, video_tokens, text_hidden, attention_mask, logits_per_video, video_ids):
        """The original's VTM loss on the local batch: each positive pair, plus for each text a negative video
        and for each video a negative text, drawn in proportion to softmax(similarity) (hard negatives) or
        uniformly; cross-entropy with label 1 for positives, 0 for negatives."""
        batch = video_tokens.shape[0]
        with torch.no_grad():
            positives = _positives(video_ids, batch, logits_per_video.device).bool()
            if self.config.hard_negatives:
                weights_v2t = F.softmax(logits_per_video.float() + 1e-4, dim=1)
                weights_t2v = F.softmax(logits_per_video.t().float() + 1e-4, dim=1)
            else:
                weights_v2t = weights_t2v = torch.ones(batch, batch, device=logits_per_video.device)
            weights_v2t, weights_t2v = weights_v2t.masked_fill(positives, 0), weights_t2v.masked_fill(positives, 0)
            # Rows without any negative (a batch of one video) are left out.
            has_negative = ~positives.all(1)
        if not has_negative.any():
            return logits_per_video.sum() * 0.0
        rows = has_negative.nonzero().squeeze(1)
        negative_videos = torch.multinomial(weights_t2v[rows], 1).squeeze(1)  # a negative video for each text
        negative_texts = torch.multinomial(weights_v2t[rows], 1).squeeze(1)  # a negative text for each video
        mask = attention_mask if attention_mask is not None else torch.ones(text_hidden.shape[:2], device=text_hidden.device)
        all_videos = torch.cat([video_tokens, video_tokens[negative_videos], video_tokens[rows]])
        all_texts = torch.cat([text_hidden, text_hidden[rows], text_hidden[negative_texts]])
        all_masks = torch.cat([mask, mask[rows], mask[negative_texts]])
        logits = self.match_pairs(all_videos, all_texts, all_masks)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:batch] = 1
        return F.cross_entropy(logits.float(), labels)

    def forward(
        self,
        pixel_values: torch.Tensor = None,
        input_ids: torch.Tensor = None,
        attention_mask: torch.Tensor = None,
        video_ids: torch.Tensor = None,
        return_loss: bool = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool = None,
        **kwargs,
    ):
        r"""
        pixel_values (`torch.FloatTensor` of shape `(videos, frames, channels, height, width)`).
        input_ids, attention_mask (`torch.LongTensor` of shape `(texts, length)`).
        video_ids (`torch.LongTensor` of shape `(batch,)`, *optional*): for the loss, an id per pair; pairs sharing
            a video id are all positives (several captions of one video in a batch).
        return_loss (`bool`, *optional*): compute the training loss; then row i of `pixel_values` and of `input_ids`
            form a pair. The contrastive part gathers the batch from every process (with gradient) under
            `torch.distributed`; the matching part uses the local batch.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if return_loss and self.training:
            # As the original: the learned temperature is clamped in place before each training step.
            with torch.no_grad():
                self.temp.clamp_(self.config.min_temperature, self.config.max_temperature)
        video = self.encode_video(pixel_values, interpolate_pos_encoding)
        text = self.encode_text(input_ids, attention_mask)
        logits_per_video = video_text_similarity(video.video_embeds, text.text_embeds) / self.temp
        loss = contrastive = matching = None
        if return_loss:
            if video.video_embeds.shape[0] != text.text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs matching pairs: got {video.video_embeds.shape[0]} videos and "
                    f"{text.text_embeds.shape[0]} texts."
                )
            contrastive = video_text_contrastive_loss(video.video_embeds, text.text_embeds, self.temp, video_ids)
            matching = self._matching_loss(
                video.video_tokens, text.last_hidden_state, attention_mask, logits_per_video.detach(), video_ids
            )
            loss = self.config.contrastive_loss_weight * contrastive + self.config.matching_loss_weight * matching
        output = VideoMambaVideoTextOutput(
            loss=loss,
            contrastive_loss=contrastive,
            matching_loss=matching,
            logits_per_video=logits_per_video,
            logits_per_text=logits_per_video.t(),
            video_embeds=video.video_embeds,
            text_embeds=text.text_embeds,
            video_tokens=video.video_tokens,
            text_last_hidden_state=text.last_hidden_state,
            vision_model_output=video.vision_model_output,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "VideoMambaVideoTextModel",
    "VideoMambaVideoTextOutput",
    "VideoMambaVideoTextPreTrainedModel",
    "gather_with_grad",
    "video_text_contrastive_loss",
    "video_text_similarity",
]
