"""Auto classes in-process, and loading a saved directory with trust_remote_code where the package is absent."""

import json
import textwrap

import torch
from remote_code import run_without_package
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForVideoClassification

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForVideoClassification,
    VideoMambaModel,
)

TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3)


def test_auto_classes_build_our_models():
    config = AutoConfig.for_model("videomamba", **TINY)
    assert isinstance(config, VideoMambaConfig)
    assert isinstance(AutoModel.from_config(config), VideoMambaModel)
    assert isinstance(AutoModelForVideoClassification.from_config(config), VideoMambaForVideoClassification)
    assert isinstance(AutoModelForImageClassification.from_config(config), VideoMambaForImageClassification)


def test_save_pretrained_writes_safetensors_auto_map_and_modeling_files(tmp_path):
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_videomamba.py", "modeling_videomamba.py",
            "selective_scan.py"} <= names
    assert not any(name.endswith((".bin", ".pth")) for name in names)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForVideoClassification"] == "modeling_videomamba.VideoMambaForVideoClassification"
    x = torch.randn(1, 4, 3, 32, 32)
    reloaded = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is VideoMambaForVideoClassification
    torch.testing.assert_close(reloaded(x).logits, model(x).logits)
    backbone = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(backbone(x).last_hidden_state, model.videomamba(x).last_hidden_state)


# Runs in a fresh interpreter where `import modeling_videomamba` fails, so only the copied files can serve.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

    directory = {directory!r}
    inputs = torch.load(directory + "/inputs.pt")
    config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
    assert type(config).__name__ == "VideoMambaConfig", type(config)
    classifier = AutoModelForVideoClassification.from_pretrained(directory, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    assert "transformers_modules" in type(classifier).__module__, type(classifier).__module__
    with torch.no_grad():
        torch.save(
            {{"logits": classifier(inputs).logits, "last_hidden_state": backbone(inputs).last_hidden_state}},
            directory + "/outputs.pt",
        )
    print("REMOTE-OK", type(classifier).__module__)
    """
)


def test_saved_directory_loads_with_trust_remote_code_without_the_package(tmp_path):
    directory = tmp_path / "model"
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY)).eval()
    model.save_pretrained(directory)
    inputs = torch.randn(2, 4, 3, 32, 32)
    torch.save(inputs, directory / "inputs.pt")
    result = run_without_package(REMOTE_SCRIPT.format(directory=str(directory)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-OK" in result.stdout
    outputs = torch.load(directory / "outputs.pt")
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], model(inputs).logits)
        torch.testing.assert_close(outputs["last_hidden_state"], model.videomamba(inputs).last_hidden_state)


PRETRAINING_REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForPreTraining

    directory = {directory!r}
    model = AutoModelForPreTraining.from_pretrained(directory, trust_remote_code=True).eval()
    assert type(model).__name__ == "VideoMambaForPreTraining" and "transformers_modules" in type(model).__module__
    inputs = torch.load(directory + "/inputs.pt")
    with torch.no_grad():
        assert model(inputs).aligned_features.shape[-1] == 8
        torch.save(model.videomamba(inputs).last_hidden_state, directory + "/backbone.pt")
    print("REMOTE-OK")
    """
)


def test_classifier_directory_loads_as_every_auto_map_head_with_trust_remote_code(tmp_path):
    """A classifier's directory also carries the pretraining head's module, which its auto_map names."""
    directory = tmp_path / "model"
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY, teacher_hidden_size=8)).eval()
    model.save_pretrained(directory)
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert {f"{reference.split('.')[0]}.py" for reference in auto_map.values()} <= {p.name for p in directory.iterdir()}
    inputs = torch.randn(1, 4, 3, 32, 32)
    torch.save(inputs, directory / "inputs.pt")
    result = run_without_package(PRETRAINING_REMOTE_SCRIPT.format(directory=str(directory)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # the classifier's backbone weights (the aligned-feature decoders are new, so their outputs are not compared)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(directory / "backbone.pt"), model.videomamba(inputs).last_hidden_state)
