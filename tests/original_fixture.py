"""Access to the original implementation's outputs (../shared/fixtures/original/video_cls_a.pt)."""

from pathlib import Path

import pytest
import torch

from modeling_videomamba import VideoMambaConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_NAME = Path("fixtures") / "original" / "video_cls_a.pt"
CANDIDATES = (REPO_ROOT.parent / "shared" / FIXTURE_NAME, REPO_ROOT / "tests" / FIXTURE_NAME)


def fixture_path() -> Path:
    for candidate in CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"The original-output fixture is missing; looked in {[str(c) for c in CANDIDATES]}.")


def load_fixture() -> dict:
    return torch.load(fixture_path(), weights_only=True)


def fixture_config(fixture: dict, **overrides) -> VideoMambaConfig:
    """Our config for the fixture's original constructor kwargs."""
    kwargs = fixture["kwargs"]
    return VideoMambaConfig(
        image_size=kwargs["img_size"],
        patch_size=kwargs["patch_size"],
        num_frames=kwargs["num_frames"],
        tubelet_size=kwargs["kernel_size"],
        hidden_size=kwargs["embed_dim"],
        num_hidden_layers=kwargs["depth"],
        num_labels=kwargs["num_classes"],
        layer_norm_epsilon=kwargs["norm_epsilon"],
        **overrides,
    )


# Original key prefix -> our parameter name (classification model), as the converter maps them.
_RENAMES = (
    ("cls_token", "videomamba.embeddings.cls_token"),
    ("pos_embed", "videomamba.embeddings.position_embeddings"),
    ("temporal_pos_embedding", "videomamba.embeddings.temporal_position_embeddings"),
    ("patch_embed.proj.", "videomamba.embeddings.patch_embeddings.projection."),
    ("layers.", "videomamba.layers."),
    ("norm_f.", "videomamba.norm_f."),
    ("head.", "classifier."),
)


def renamed_state_dict(state_dict: dict) -> dict:
    renamed = {}
    for key, value in state_dict.items():
        prefix, target = next((p, t) for p, t in _RENAMES if key.startswith(p))
        renamed[target + key[len(prefix):]] = value
    return renamed


@pytest.fixture(scope="session")
def original():
    return load_fixture()
