"""pipeline("video-classification") on real files, from a saved directory, in-process and as remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from remote_code import run_without_package
from transformers import pipeline

from modeling_videomamba import VideoMambaForVideoClassification, VideoMambaVideoProcessor


def _expected_scores(model_dir, path):
    """Independent of the pipeline: processor -> model -> softmax, as {label: score}."""
    model = VideoMambaForVideoClassification.from_pretrained(model_dir).eval()
    processor = VideoMambaVideoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        probs = model(**processor(path, return_tensors="pt")).logits[0].softmax(-1)
    return {model.config.id2label[i]: p for i, p in enumerate(probs.tolist())}


@pytest.fixture(scope="module")
def classifier(tiny_model_dir):
    return pipeline("video-classification", model=str(tiny_model_dir))


def test_pipeline_loads_our_processor_and_matches_a_direct_model_call(classifier, tiny_model_dir, videos):
    assert type(classifier.video_processor) is VideoMambaVideoProcessor
    result = classifier(str(videos["mp4"]), top_k=3)
    expected = _expected_scores(tiny_model_dir, str(videos["mp4"]))
    assert [r["label"] for r in result] == sorted(expected, key=expected.get, reverse=True)
    for r in result:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-6)
    assert len(classifier(str(videos["mp4"]), top_k=2)) == 2


def test_pipeline_takes_lists_of_paths_in_any_container(classifier, tiny_model_dir, videos, real_clip):
    paths = [str(videos["webm"]), str(videos["gif"]), str(videos["avi"]), real_clip]
    results = classifier(paths, top_k=1)
    assert len(results) == 4
    for path, result in zip(paths, results):
        expected = _expected_scores(tiny_model_dir, path)
        assert result[0]["label"] == max(expected, key=expected.get)
        assert result[0]["score"] == pytest.approx(max(expected.values()), abs=1e-6)


def test_pipeline_passes_num_frames_to_the_processor(classifier, videos):
    assert classifier.preprocess(str(videos["mp4"]), num_frames=6)["pixel_values"].shape == (1, 6, 3, 32, 32)
    assert classifier.preprocess(str(videos["mp4"]))["pixel_values"].shape == (1, 4, 3, 32, 32)


def test_pipeline_batches_like_one_by_one(classifier, videos, real_clip):
    # Different containers, lengths and sizes; 5 videos in batches of 2 leave a last batch of 1.
    paths = [str(videos["mp4"]), str(videos["long"]), str(videos["tall"]), real_clip, str(videos["webm"])]
    one_by_one = [classifier(path, top_k=3) for path in paths]
    batched = classifier(paths, batch_size=2, top_k=3)
    assert len(batched) == len(paths)
    for alone, together in zip(one_by_one, batched):
        assert [r["label"] for r in together] == [r["label"] for r in alone]
        assert [r["score"] for r in together] == pytest.approx([r["score"] for r in alone], abs=1e-5)


def test_pipeline_reports_unreadable_files(classifier, broken_videos):
    with pytest.raises(ValueError, match="no video stream"):
        classifier(str(broken_videos["audio_only"]))


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys

    from transformers import AutoProcessor, pipeline

    model_dir, paths = sys.argv[1], sys.argv[2:]
    classifier = pipeline("video-classification", model=model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    print(json.dumps({
        "model_module": type(classifier.model).__module__,
        "processor_module": type(classifier.video_processor).__module__,
        "auto_processor": type(processor).__module__ + "." + type(processor).__name__,
        "pixel_values": processor(videos=paths[0])["pixel_values"].flatten().tolist(),
        "results": classifier(paths, top_k=3, batch_size=2),
        "torchvision": "torchvision" in sys.modules,
    }))
    """
)


def test_pipeline_with_trust_remote_code_where_the_package_is_not_importable(tiny_model_dir, videos, tmp_path):
    paths = [str(videos["mp4"]), str(videos["mkv"])]
    run = run_without_package(REMOTE_SCRIPT, tiny_model_dir, *paths, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["model_module"].startswith("transformers_modules.")
    assert report["processor_module"].startswith("transformers_modules.")
    assert report["torchvision"] is False
    assert report["auto_processor"].startswith("transformers_modules.")
    assert report["auto_processor"].endswith("processing_videomamba.VideoMambaProcessor")
    expected_pixels = VideoMambaVideoProcessor.from_pretrained(tiny_model_dir)(paths[0])["pixel_values"]
    assert torch.equal(torch.tensor(report["pixel_values"]), expected_pixels.flatten())
    for path, result in zip(paths, report["results"]):
        expected = _expected_scores(tiny_model_dir, path)
        assert {r["label"]: r["score"] for r in result} == pytest.approx(expected, abs=1e-6)


MISSING_SCRIPT = textwrap.dedent(
    """
    import sys

    for name in ["modeling_videomamba", *sys.argv[2:]]:
        sys.modules[name] = None  # as if not installed: `import` fails, find_spec finds nothing

    from transformers import AutoImageProcessor, AutoProcessor

    for auto in (AutoProcessor, AutoImageProcessor):
        try:
            auto.from_pretrained(sys.argv[1], trust_remote_code=True)
            print(auto.__name__, "loaded")
        except ImportError as error:
            print(auto.__name__, "ImportError:", " ".join(str(error).split()))
    """
)


@pytest.mark.parametrize(
    "blocked, expected",
    [
        (["av"], {"AutoProcessor": "pip install av", "AutoImageProcessor": "loaded"}),
        (["PIL"], {"AutoProcessor": "loaded", "AutoImageProcessor": "pip install pillow"}),
    ],
)
def test_remote_code_names_the_packages_to_install(tiny_model_dir, tmp_path, blocked, expected):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", MISSING_SCRIPT, str(tiny_model_dir), *blocked],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.strip().splitlines()[-2:])
    for auto, text in expected.items():
        assert text in lines[auto], lines
