"""`VideoMambaVideoTextProcessor`: the video processor and a BERT tokenizer, for `VideoMambaVideoTextModel`."""

from transformers.feature_extraction_utils import BatchFeature

from .processing_videomamba import VideoMambaProcessor


class VideoMambaVideoTextProcessor(VideoMambaProcessor):
    r"""
    Prepares clips and captions for [`VideoMambaVideoTextModel`]: `videos` go through a
    [`VideoMambaVideoProcessor`], `text` through a BERT tokenizer (the released checkpoints use bert-base-uncased's
    WordPiece vocabulary; nothing is downloaded, pass a tokenizer built from its files).
    `save_pretrained`/`from_pretrained` (and `AutoProcessor`) store both.

    Args:
        video_processor ([`VideoMambaVideoProcessor`]): the video processor.
        tokenizer (`BertTokenizer`, or any tokenizer with [CLS] first): the text tokenizer.
    """

    def __init__(self, video_processor=None, tokenizer=None, **kwargs):
        if tokenizer is None:
            raise ValueError("VideoMambaVideoTextProcessor needs a `tokenizer` (e.g. a BertTokenizer for bert-base-uncased).")
        super().__init__(video_processor, tokenizer=tokenizer, **kwargs)

    def __call__(self, videos=None, text=None, padding=True, truncation=True, max_length=None, return_tensors="pt", **kwargs):
        """`pixel_values` (videos, frames, C, H, W) from `videos` (see `VideoMambaVideoProcessor.preprocess`, which
        takes the remaining keyword arguments) and `input_ids`/`attention_mask` (texts, length) from `text` (a
        string or a list of them), padded to the longest caption and truncated to `max_length` by default."""
        if videos is None and text is None:
            raise ValueError("VideoMambaVideoTextProcessor needs `videos`, `text` or both.")
        data = {}
        if videos is not None:
            data.update(self.video_processor(videos, return_tensors=return_tensors, **kwargs))
        if text is not None:
            if isinstance(text, str):
                text = [text]
            if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
                raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}.")
            encoded = self.tokenizer(
                list(text), padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                return_token_type_ids=False,
            )
            data.update(encoded)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return list(self.video_processor.model_input_names) + ["input_ids", "attention_mask"]


__all__ = ["VideoMambaVideoTextProcessor"]
