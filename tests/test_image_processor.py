"""VideoMambaImageProcessor: the original's ImageNet evaluation transform, and pipeline("image-classification")
on a converted image model, in-process and as remote code."""

import json
import textwrap

import numpy as np
import pytest
import torch
from remote_code import run_without_package
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, pipeline

from modeling_videomamba import VideoMambaConfig, VideoMambaForImageClassification, VideoMambaImageProcessor
from modeling_videomamba.convert_original_checkpoint import convert_original_checkpoint
from test_convert import original_state_dict

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def reference_pixels(image, image_size):
    """Independent of transformers: PIL bicubic resize of the shorter side to int(size / 0.875), centre crop
    (offsets rounded as torchvision's CenterCrop), ImageNet normalisation. Returns (3, size, size)."""
    short = int(image_size / 0.875)
    width, height = image.size
    new_size = (int(short * width / height), short) if height <= width else (short, int(short * height / width))
    resized = np.asarray(image.convert("RGB").resize(new_size, Image.BICUBIC)).astype(np.float64) / 255
    top = int(round((resized.shape[0] - image_size) / 2))
    left = int(round((resized.shape[1] - image_size) / 2))
    crop = resized[top : top + image_size, left : left + image_size]
    return torch.from_numpy(((crop - MEAN) / STD).transpose(2, 0, 1)).float()


def random_image(height, width, seed=0, mode="RGB"):
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image.convert(mode)


@pytest.fixture(scope="module")
def image_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("imagenet") / "converted"
    convert_original_checkpoint(original_state_dict(image_model=True, classes=1000), output_dir=out)
    return out


def test_defaults_are_the_original_224_eval_transform():
    processor = VideoMambaImageProcessor()
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    image = random_image(240, 300)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], reference_pixels(image, 224), atol=1e-5, rtol=0)


@pytest.mark.parametrize("height, width, mode", [(40, 50, "RGB"), (61, 37, "RGB"), (45, 45, "L"), (50, 40, "RGBA")])
def test_matches_the_pil_reference_for_any_shape_and_mode(height, width, mode):
    processor = VideoMambaImageProcessor.from_model_config(VideoMambaConfig(image_size=32, patch_size=8))
    image = random_image(height, width, mode=mode)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0], reference_pixels(image, 32), atol=1e-5, rtol=0)


def test_image_classification_pipeline_on_a_converted_model(image_model_dir):
    assert type(AutoImageProcessor.from_pretrained(image_model_dir)) is VideoMambaImageProcessor
    # AutoProcessor finds VideoMambaProcessor through the config class; it must hand back the image processor.
    auto = AutoProcessor.from_pretrained(image_model_dir)
    assert type(auto) is VideoMambaImageProcessor and auto.crop_size == {"height": 32, "width": 32}
    classifier = pipeline("image-classification", model=str(image_model_dir))
    image = random_image(48, 60, seed=1)
    predictions = classifier(image, top_k=3)
    model = VideoMambaForImageClassification.from_pretrained(image_model_dir).eval()
    with torch.no_grad():
        probs = model(reference_pixels(image, 32)[None]).logits[0].softmax(-1)
    top = probs.topk(3)
    assert [p["label"] for p in predictions] == [model.config.id2label[i] for i in top.indices.tolist()]
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert predictions[0]["label"] in model.config.label2id  # ImageNet names, not LABEL_i


def test_a_string_that_is_no_image_raises_a_clear_error():
    with pytest.raises(ValueError, match="Incorrect image source.*not an image"):
        VideoMambaImageProcessor()("not an image")


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    import numpy as np

    from transformers import AutoImageProcessor, AutoProcessor, pipeline

    model_dir, image_path = sys.argv[1:]
    processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
    classifier = pipeline("image-classification", model=model_dir, trust_remote_code=True)
    image = Image.open(image_path)
    print(json.dumps({
        "processor_module": type(processor).__module__,
        "pixel_values": processor(image, return_tensors="pt")["pixel_values"].flatten().tolist(),
        "results": classifier(image, top_k=2),
        "torchvision": "torchvision" in sys.modules,
    }))
    """
)


def test_image_pipeline_with_trust_remote_code_where_the_package_is_not_importable(image_model_dir, tmp_path):
    image_path = tmp_path / "image.png"
    random_image(50, 42, seed=2).save(image_path)
    run = run_without_package(REMOTE_SCRIPT, image_model_dir, image_path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["processor_module"].startswith("transformers_modules.") and report["torchvision"] is False
    expected = reference_pixels(Image.open(image_path), 32)
    torch.testing.assert_close(torch.tensor(report["pixel_values"]), expected.flatten(), atol=1e-5, rtol=0)
    local = pipeline("image-classification", model=str(image_model_dir))(str(image_path), top_k=2)
    assert [r["label"] for r in report["results"]] == [r["label"] for r in local]
    assert [r["score"] for r in report["results"]] == pytest.approx([r["score"] for r in local], abs=1e-6)
