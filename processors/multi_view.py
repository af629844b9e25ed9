"""Multi-view evaluation: average a classifier's predictions over the views of each video.

The paper's Kinetics protocol scores each video on 4 temporal clips x 3 spatial crops and averages. Build
the views with `VideoMambaVideoProcessor(..., num_temporal_clips=4, num_spatial_crops=3)`; its output rows
are the views of each video in turn, and `num_views` says how many.
"""

import torch

AVERAGES = ("probs", "logits")


@torch.no_grad()
def multi_view_predict(model, pixel_values, num_views, average="probs", chunk_size=None):
    """Average the predictions of `model` over consecutive groups of `num_views` rows.

    Args:
        model: a classifier returning an output with `.logits` (rows, num_labels).
        pixel_values: (batch * num_views, T, C, H, W), views of a video in consecutive rows.
        num_views: views per video (`inputs["num_views"]` from the processor; 1 for a single view).
        average: `"probs"` (mean softmax probabilities, as VideoMAE/VideoMamba's test merge) or `"logits"`.
        chunk_size: rows per forward pass (None: all at once) to bound memory.
    Returns:
        (batch, num_labels) averaged probabilities or logits.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}.")
    num_views = int(num_views)
    rows = pixel_values.shape[0]
    if num_views <= 0 or rows % num_views:
        raise ValueError(f"{rows} rows of pixel_values cannot be split into groups of num_views={num_views}.")
    step = chunk_size or rows
    logits = torch.cat([model(pixel_values=pixel_values[i : i + step]).logits for i in range(0, rows, step)])
    scores = logits.float().softmax(-1) if average == "probs" else logits.float()
    return scores.view(rows // num_views, num_views, -1).mean(1)


__all__ = ["multi_view_predict"]
