"""video_features / long_video_features (modeling_videomamba/features.py): clip, per-frame and dense features."""

import numpy as np
import pytest
import torch
from video_fixtures import make_frames, write_h264

from modeling_videomamba.processors import segment_times

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForVideoClassification,
    VideoMambaModel,
    VideoMambaVideoProcessor,
    long_video_features,
    read_video,
    video_features,
)

SMALL = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, scan_implementation="fast")


@pytest.mark.parametrize("order", ["spatial_first", "hybrid"])
@pytest.mark.parametrize("mean_pooling", [False, True])
def test_features_are_the_backbone_tokens_on_their_grid(order, mean_pooling):
    torch.manual_seed(0)
    model = VideoMambaModel(VideoMambaConfig(**SMALL, token_order=order, use_mean_pooling=mean_pooling)).eval()
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        features = video_features(model, pixel_values)
        outputs = model(pixel_values)
    assert features.patch_features.shape == (2, 4, 4, 4, 32)
    assert features.frame_features.shape == (2, 4, 32)
    torch.testing.assert_close(features.clip_embedding, outputs.pooler_output, rtol=0, atol=0)
    # Token 1 + t*h*w + i*w + j is patch (t, i, j), whatever order the blocks scanned in.
    t, i, j = 2, 1, 3
    torch.testing.assert_close(features.patch_features[:, t, i, j], outputs.last_hidden_state[:, 1 + t * 16 + i * 4 + j])
    frame_tokens = outputs.last_hidden_state[:, 1 + t * 16 : 1 + (t + 1) * 16]
    torch.testing.assert_close(features.frame_features[:, t], frame_tokens.mean(1))


def test_a_head_gives_its_backbone_features_and_any_frame_count_runs():
    torch.manual_seed(0)
    classifier = VideoMambaForVideoClassification(VideoMambaConfig(**SMALL, num_labels=3, tubelet_size=2)).eval()
    with torch.no_grad():
        features = video_features(classifier, torch.randn(1, 10, 3, 40, 48))   # model: 4 frames at 32x32
    assert features.patch_features.shape == (1, 5, 5, 6, 32)   # tubelet 2: 5 time steps of 5x6 patches
    assert features.frame_features.shape == (1, 5, 32)
    assert torch.isfinite(features.patch_features).all()


def test_image_model_features_have_one_frame():
    image_model = VideoMambaForImageClassification(VideoMambaConfig(**SMALL, num_labels=2)).eval()
    with torch.no_grad():
        features = video_features(image_model, torch.randn(3, 3, 32, 32))
    assert features.patch_features.shape == (3, 1, 4, 4, 32)
    torch.testing.assert_close(features.frame_features[:, 0], features.patch_features.mean(dim=(1, 2, 3)))


def test_gradients_flow_when_asked():
    model = VideoMambaModel(VideoMambaConfig(**SMALL))
    features = video_features(model, torch.randn(1, 4, 3, 32, 32))
    features.frame_features.sum().backward()
    assert model.embeddings.patch_embeddings.projection.weight.grad is not None


def test_models_without_a_videomamba_backbone_are_refused():
    with pytest.raises(TypeError, match="VideoMambaModel or a model built on one.*Linear"):
        video_features(torch.nn.Linear(2, 2), torch.randn(1, 4, 3, 32, 32))


def test_long_video_windows_give_the_features_of_their_clips(tmp_path):
    frames = np.concatenate([make_frames(24, 48, 64)] * 3)
    for index, frame in enumerate(frames):
        frame[:, (2 * index) % 58 : (2 * index) % 58 + 6, 0] = 240   # frames differ from each other
    path = write_h264(tmp_path / "long.mp4", frames, fps=10)        # 7.2 s
    torch.manual_seed(0)
    config = VideoMambaConfig(**SMALL)
    model = VideoMambaModel(config).eval()
    processor = VideoMambaVideoProcessor.from_model_config(config)
    result = long_video_features(model, processor, path, window_seconds=3, stride_seconds=3, batch_size=2,
                                 patch_features=True)
    spans = [bound for window in result["windows"] for bound in (window["start"], window["end"])]
    assert spans == pytest.approx([0, 3, 3, 6, 4.2, 7.2])
    window = result["windows"][1]
    assert window["frame_features"].shape == (4, 32) and window["patch_features"].shape == (4, 4, 4, 32)
    # The same window sampled by the processor from the decoded video gives the same features.
    clip, _ = read_video(path, lambda timeline: segment_times(timeline, 4, start=3.0, end=6.0))
    pixel_values = processor(clip, do_sample_frames=False, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 4, 3, 32, 32)
    with torch.no_grad():
        expected = video_features(model, pixel_values)
    torch.testing.assert_close(window["clip_embedding"], expected.clip_embedding[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(window["frame_features"], expected.frame_features[0], rtol=1e-5, atol=1e-5)
    assert "patch_features" not in long_video_features(model, processor, path, window_seconds=3)["windows"][0]
