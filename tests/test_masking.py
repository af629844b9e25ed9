"""The five masking strategies and the masking schedule callback."""

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from modeling_videomamba.masking import MASK_TYPES, MaskingCallback, MaskingSpec, generate_mask

GRID = (4, 6, 5)  # T, h, w: rows and columns differ so row/column mix-ups show
BATCH = 3


def _rows(mask):
    """(B, T*h*w) -> (B, T, h, w)."""
    return mask.reshape(BATCH, *GRID)


@pytest.mark.parametrize("mask_type", MASK_TYPES)
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.8])
def test_every_mask_has_the_documented_count_in_every_sample(mask_type, ratio):
    frames, height, width = GRID
    attention = torch.rand(BATCH, frames, height * width)
    mask = generate_mask(mask_type, BATCH, GRID, ratio, attention=attention, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (BATCH, frames * height * width) and mask.dtype == torch.bool
    expected = {
        "random": int(frames * height * width * ratio),
        "tube": frames * int(height * width * ratio),
        "frame_row": frames * int(ratio * height) * width,
        "clip_row": frames * int(ratio * height) * width,
        "attention": frames * int(height * width * ratio),
    }[mask_type]
    assert mask.sum(-1).tolist() == [expected] * BATCH


@pytest.mark.parametrize("mask_type", ["frame_row", "clip_row"])
def test_row_masks_hide_whole_rows(mask_type):
    mask = _rows(generate_mask(mask_type, BATCH, GRID, 0.5, generator=torch.Generator().manual_seed(1)))
    row_sums = mask.sum(-1)  # (B, T, h)
    assert set(row_sums.unique().tolist()) <= {0, GRID[2]}
    if mask_type == "frame_row":
        assert (mask.all(-1).sum(-1) == int(0.5 * GRID[1])).all()  # each frame its own int(r*h) rows
    else:
        per_frame = mask.all(-1).sum(-1)
        assert (per_frame.sum(-1) == GRID[0] * int(0.5 * GRID[1])).all()
        # Clip rows are drawn from the whole clip: over many draws some frame gets more than its share.
        draws = _rows(generate_mask(mask_type, BATCH, GRID, 0.5, generator=torch.Generator().manual_seed(2)))
        assert (torch.cat([per_frame, draws.all(-1).sum(-1)]) != int(0.5 * GRID[1])).any()


def test_tube_mask_repeats_one_frame_mask_over_time():
    mask = _rows(generate_mask("tube", BATCH, GRID, 0.6, generator=torch.Generator().manual_seed(3)))
    assert (mask == mask[:, :1]).all()
    assert not (mask[0, 0] == mask[1, 0]).all()  # samples differ


def test_attention_masking_keeps_the_attended_tokens():
    frames, height, width = GRID
    per_frame = height * width
    ratio = 0.8
    num_keep = per_frame - int(per_frame * ratio)
    attention = torch.zeros(BATCH, frames, per_frame)
    favourites = torch.stack([torch.randperm(per_frame)[:num_keep] for _ in range(BATCH * frames)]).reshape(BATCH, frames, num_keep)
    attention.scatter_(-1, favourites, 1.0)  # all the weight on exactly num_keep tokens per frame
    mask = generate_mask("attention", BATCH, GRID, ratio, attention=attention).reshape(BATCH, frames, per_frame)
    kept = (~mask).nonzero()
    assert len(kept) == BATCH * frames * num_keep
    assert attention[kept[:, 0], kept[:, 1], kept[:, 2]].eq(1).all()


def test_attention_sampling_follows_the_weights():
    # One frame, 4 tokens, keep 1: token frequencies follow the weights (multinomial, not top-k).
    weights = torch.tensor([[[0.6, 0.3, 0.1, 0.0]]]).expand(2000, 1, 4)
    mask = generate_mask("attention", 2000, (1, 2, 2), 0.75, attention=weights, generator=torch.Generator().manual_seed(0))
    frequency = (~mask).float().mean(0)
    assert torch.allclose(frequency, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.04)


def test_bad_masking_requests_raise():
    with pytest.raises(ValueError, match="mask_type"):
        generate_mask("diagonal", 1, GRID, 0.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        generate_mask("random", 1, GRID, 1.0)
    with pytest.raises(ValueError, match="attention"):
        generate_mask("attention", 1, GRID, 0.5)
    with pytest.raises(ValueError, match=r"\(batch, T, h\*w\)"):
        generate_mask("attention", 1, GRID, 0.5, attention=torch.rand(1, 30))
    with pytest.raises(ValueError, match="sorted"):
        MaskingCallback(MaskingSpec(), [(0.5, "tube", 0.5), (0.0, "random", 0.5)])
    with pytest.raises(ValueError, match="mask_type"):
        MaskingCallback(MaskingSpec(), [(0.0, "nope", 0.5)])


def test_masking_callback_follows_the_schedule(tmp_path):
    spec = MaskingSpec("tube", 0.9)
    callback = MaskingCallback(spec, [(0.0, "random", 0.5), (0.5, "clip_row", 0.75)])
    state, seen = TrainerState(max_steps=10), []
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    for step in range(10):
        state.global_step = step
        callback.on_step_begin(args, state, TrainerControl())
        seen.append((spec.mask_type, spec.mask_ratio))
    assert seen == [("random", 0.5)] * 5 + [("clip_row", 0.75)] * 5
