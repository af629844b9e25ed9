"""Fine-tuning helpers for `VideoMambaVideoTextModel` (trainer_scripts/run_video_text_retrieval.py): video-caption
data from CSV/JSON files or a `datasets` dataset, a collator that tokenises the captions, and a Trainer whose
evaluation reports retrieval metrics."""

import logging
from pathlib import Path

import torch
from transformers import Trainer

from .modeling_videomamba_video_text import video_text_similarity
from .processors import undecoded_videos, video_cell_source
from .training_utils import DatasetEpochCallback, VideoClipDataset, _load_dataset_split
from .video_text_retrieval import rerank_with_matching, retrieval_metrics

logger = logging.getLogger(__name__)

CAPTION_FILE_TYPES = {".csv": "csv", ".json": "json", ".jsonl": "json"}


def load_caption_samples(data_file=None, dataset_name=None, split="train", video_column="video", caption_column="caption"):
    """[(video, caption)] from a CSV / JSON / JSON-lines file of video paths (relative ones are taken relative to
    the file's folder) or a `datasets` dataset (a Hub name, local folder or `save_to_disk` folder) whose
    `video_column` holds paths or `Video` cells (read undecoded: a path, or the encoded bytes). A video may appear
    in several rows, one per caption."""
    import datasets

    if data_file:
        path = Path(data_file)
        if not path.is_file():
            raise OSError(f"Caption file {str(path)!r} does not exist.")
        kind = CAPTION_FILE_TYPES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"Caption file {str(path)!r}: expected one of {sorted(CAPTION_FILE_TYPES)}.")
        dataset, root, name = datasets.load_dataset(kind, data_files=str(path), split="train"), path.parent, str(path)
    elif dataset_name:
        dataset, root, name = _load_dataset_split(dataset_name, split), None, dataset_name
    else:
        raise ValueError("Give a caption file (--train_file/--validation_file) or --dataset_name.")
    for column in (video_column, caption_column):
        if column not in dataset.column_names:
            raise ValueError(f"{name} has no column {column!r}; its columns are {dataset.column_names}.")
    samples = []
    dataset = undecoded_videos(dataset, video_column)
    for video, caption in zip(dataset[video_column], dataset[caption_column]):
        video = video_cell_source(video)
        if root is not None and isinstance(video, str) and not Path(video).is_absolute():
            video = str(root / video)
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{name}: the caption of {video!r} is empty or not text ({caption!r}).")
        samples.append((video, caption))
    if not samples:
        raise ValueError(f"{name} holds no video-caption rows.")
    return samples


class VideoCaptionDataset(torch.utils.data.Dataset):
    """(video path, caption) rows -> {"pixel_values": (T, C, H, W), "caption": str, "video_id": int}.

    Videos are decoded and augmented as for classification (`VideoClipDataset`: per-(seed, epoch, index)
    randomness, optional cache); `video_id` numbers the distinct videos, so captions of one video count as
    positives of each other in the contrastive loss, and `videos` / `text_to_video` give the retrieval layout.
    """

    def __init__(self, samples, processor, train: bool, cache: bool = False, seed: int = 0):
        paths = list(dict.fromkeys(path for path, _ in samples))  # a path or the encoded bytes of a video
        index = {path: i for i, path in enumerate(paths)}
        self.videos, self.captions = paths, [caption for _, caption in samples]
        self.text_to_video = [index[path] for path, _ in samples]
        self.clips = VideoClipDataset([(path, index[path]) for path, _ in samples], processor, train, cache=cache, seed=seed)

    def __len__(self):
        return len(self.clips)

    def set_epoch(self, epoch: int):
        self.clips.set_epoch(epoch)

    def __getitem__(self, index):
        item = self.clips[index]
        return {"pixel_values": item["pixel_values"], "caption": self.captions[index], "video_id": item["labels"]}


class VideoCaptionCollator:
    """Stacks clips, tokenises captions (padded to the longest, truncated to `max_length`), asks for the loss."""

    def __init__(self, tokenizer, max_length: int = 32):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples):
        text = self.tokenizer(
            [example["caption"] for example in examples], padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt", return_token_type_ids=False,
        )
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "video_ids": torch.tensor([example["video_id"] for example in examples], dtype=torch.long),
            "return_loss": True,
        }


class VideoTextRetrievalTrainer(Trainer):
    """Trainer for `VideoMambaVideoTextModel`: the model's own loss (contrastive, gathered over processes, plus
    matching); `evaluate` encodes every video and caption of a `VideoCaptionDataset` and reports t2v / v2t
    Recall@1/5/10, median and mean rank, also after re-ranking the top `rerank_k` by the matching head
    (`rerank_k=0`: similarity only). Each process evaluates the whole set (small evaluation sets)."""

    def __init__(self, *args, tokenizer=None, max_length: int = 32, rerank_k: int = 16, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer, self.max_length, self.rerank_k = tokenizer, max_length, rerank_k
        # The model's loss is a mean over its batch and ignores `num_items_in_batch`: let the Trainer divide by
        # the accumulation steps itself and not rescale by the process count.
        self.model_accepts_loss_kwargs = False
        self.add_callback(DatasetEpochCallback(self))

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(dataset, VideoCaptionDataset):
            raise ValueError("VideoTextRetrievalTrainer evaluates a VideoCaptionDataset.")
        model, device, batch = self.model, self.args.device, self.args.per_device_eval_batch_size
        was_training = model.training
        model.eval()
        first_row = {video: row for row, video in reversed(list(enumerate(dataset.text_to_video)))}
        video_embeds, video_tokens = [], []
        for start in range(0, len(dataset.videos), batch):
            rows = [first_row[video] for video in range(start, min(start + batch, len(dataset.videos)))]
            pixel_values = torch.stack([dataset[row]["pixel_values"] for row in rows]).to(device)
            encoded = model.encode_video(pixel_values)
            video_embeds.append(encoded.video_embeds)
            video_tokens.append(encoded.video_tokens)
        text = self.tokenizer(
            dataset.captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            return_token_type_ids=False,
        )
        text_embeds, text_states = [], []
        for start in range(0, len(dataset.captions), batch):
            part = slice(start, start + batch)
            encoded = model.encode_text(text["input_ids"][part].to(device), text["attention_mask"][part].to(device))
            text_embeds.append(encoded.text_embeds)
            text_states.append(encoded.last_hidden_state)
        video_embeds, video_tokens = torch.cat(video_embeds), torch.cat(video_tokens)
        text_embeds, text_states = torch.cat(text_embeds), torch.cat(text_states)
        similarity = video_text_similarity(video_embeds, text_embeds)
        metrics = retrieval_metrics(similarity, dataset.text_to_video)
        if self.rerank_k > 0:
            v2t, t2v = rerank_with_matching(
                model, similarity, video_tokens, text_states, text["attention_mask"].to(device), k=self.rerank_k
            )
            metrics.update({f"itm_{key}": value for key, value in retrieval_metrics(v2t, dataset.text_to_video, t2v).items()})
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in metrics.items()}
        model.train(was_training)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


__all__ = ["VideoCaptionCollator", "VideoCaptionDataset", "VideoTextRetrievalTrainer", "load_caption_samples"]
