"""Zero-shot use of `VideoMambaVideoTextModel`: text<->video retrieval metrics (optionally re-ranked by the
matching head, as the original evaluation) and zero-shot video classification from label prompts."""

import torch

from .modeling_videomamba_video_text import video_text_similarity

RECALL_KS = (1, 5, 10)


def best_match_ranks(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-ranked correct candidate of each query.

    scores (`(queries, candidates)`): higher is better. correct (`(queries, candidates)` bool): the right answers;
    every query needs at least one. Ties are broken towards the correct candidate's disadvantage (a correct candidate
    tied with a wrong one counts as ranked after it), so a constant score never looks like a hit.
    """
    if scores.shape != correct.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and correct {tuple(correct.shape)} must have the same shape.")
    if not correct.any(1).all():
        raise ValueError("Every query needs at least one correct candidate.")
    scores = scores.float()
    best = scores.masked_fill(~correct, float("-inf")).max(1, keepdim=True).values
    # Candidates scoring at least as high as the best correct one, the correct ones above it excluded (none are).
    ahead = (scores > best) | ((scores == best) & ~correct)
    return ahead.sum(1) + 1


def _summary(ranks: torch.Tensor, prefix: str, ks) -> dict:
    metrics = {f"{prefix}_r{k}": 100.0 * (ranks <= k).float().mean().item() for k in ks}
    # As the original: the median of the ranks (the mean of the two middle ones for an even count), rounded down.
    metrics[f"{prefix}_median_rank"] = ranks.float().quantile(0.5).floor().item()
    metrics[f"{prefix}_mean_rank"] = ranks.float().mean().item()
    return metrics


def _correct_pairs(text_to_video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """(videos, texts) bool: text n describes video text_to_video[n]."""
    text_to_video = torch.as_tensor(text_to_video).long().reshape(-1)
    if text_to_video.numel() and (text_to_video.min() < 0 or text_to_video.max() >= num_videos):
        raise ValueError(f"text_to_video holds video indices outside [0, {num_videos}).")
    return torch.arange(num_videos)[:, None] == text_to_video[None, :]


def retrieval_metrics(video_to_text_scores, text_to_video, text_to_video_scores=None, ks=RECALL_KS) -> dict:
    """Recall@k (percent), median and mean rank for text->video (`t2v_*`) and video->text (`v2t_*`) retrieval.

    Args:
        video_to_text_scores (`(videos, texts)`): scores of every pair (e.g. `logits_per_video`), used for v2t.
        text_to_video (`(texts,)` int): the video each caption describes; a video may have several captions, and
            a v2t query counts its best-ranked caption (the usual convention).
        text_to_video_scores (`(texts, videos)`, *optional*): separate t2v scores (re-ranked ones differ per
            direction); default `video_to_text_scores.t()`.
    """
    v2t = torch.as_tensor(video_to_text_scores).detach().cpu()
    t2v = v2t.t() if text_to_video_scores is None else torch.as_tensor(text_to_video_scores).detach().cpu()
    if v2t.dim() != 2 or t2v.shape != v2t.t().shape:
        raise ValueError(
            f"Expected scores (videos, texts) and (texts, videos); got {tuple(v2t.shape)} and {tuple(t2v.shape)}."
        )
    correct = _correct_pairs(text_to_video, v2t.shape[0])
    if correct.shape[1] != v2t.shape[1]:
        raise ValueError(f"text_to_video has {correct.shape[1]} entries for {v2t.shape[1]} texts.")
    return {
        **_summary(best_match_ranks(t2v, correct.t()), "t2v", ks),
        **_summary(best_match_ranks(v2t, correct), "v2t", ks),
    }


@torch.no_grad()
def rerank_with_matching(model, similarity, video_tokens, text_hidden_states, attention_mask=None, k=128) -> tuple:
    """The original evaluation's re-ranking: each query's top `k` candidates by similarity are re-scored with the
    matching head's class-1 logit; the others keep their similarity order below all of them.

    Args:
        model: a `VideoMambaVideoTextModel`.
        similarity (`(videos, texts)`): e.g. `video_text_similarity(video_embeds, text_embeds)`.
        video_tokens (`(videos, Lv, C)`): `encode_video(...).video_tokens`.
        text_hidden_states (`(texts, L, H)`), attention_mask (`(texts, L)`): from `encode_text(...)`.
    Returns:
        (video->text scores `(videos, texts)`, text->video scores `(texts, videos)`).
    """
    num_videos, num_texts = similarity.shape
    device = video_tokens.device
    if attention_mask is None:
        attention_mask = torch.ones(text_hidden_states.shape[:2], dtype=torch.long, device=device)

    def rerank(scores, pair_inputs):
        """scores (queries, candidates); pair_inputs(query, candidates) -> (video tokens, text states, mask) of the pairs."""
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        matched = torch.empty(top.shape, device=device)
        for query, candidates in enumerate(top):
            videos, texts, masks = pair_inputs(query, candidates)
            matched[query] = model.match_pairs(videos, texts, masks)[:, 1].float()
        others = scores.float().to(device)
        others = others + (matched.min() - others.max() - 1)  # keeps the similarity order, below every re-scored pair
        return others.scatter(1, top.to(device), matched)

    def video_query(video, texts):
        return video_tokens[video][None].expand(len(texts), -1, -1), text_hidden_states[texts], attention_mask[texts]

    def text_query(text, videos):
        count = len(videos)
        return video_tokens[videos], text_hidden_states[text][None].expand(count, -1, -1), attention_mask[text][None].expand(count, -1)

    return rerank(similarity, video_query), rerank(similarity.t(), text_query)


@torch.no_grad()
def zero_shot_video_classification(model, tokenizer, pixel_values, labels, template="a video of {}.", max_length=None):
    """Scores of each video against a prompt per label, `(videos, labels)` (the similarity divided by the model's
    temperature; a softmax over labels gives probabilities).

    Args:
        model: a `VideoMambaVideoTextModel`; tokenizer: its BERT tokenizer (or a `VideoMambaVideoTextProcessor`).
        pixel_values (`(videos, frames, C, H, W)`): processed clips.
        labels (list of str): class names, each put into `template`.
    """
    if not labels or not all(isinstance(label, str) for label in labels):
        raise ValueError("labels must be a non-empty list of class names (strings).")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    prompts = [template.format(label) for label in labels]
    device = next(model.parameters()).device
    text = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    text_embeds = model.get_text_features(text["input_ids"].to(device), text["attention_mask"].to(device))
    video_embeds = model.get_video_features(pixel_values.to(device))
    return video_text_similarity(video_embeds, text_embeds) / model.temp


__all__ = [
    "best_match_ranks",
    "retrieval_metrics",
    "rerank_with_matching",
    "zero_shot_video_classification",
]
