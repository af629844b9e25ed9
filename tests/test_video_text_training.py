"""trainer_scripts/run_video_text_retrieval.py: one process (train + retrieval evaluation) and two under torchrun."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor, BertConfig

from modeling_videomamba import VideoMambaConfig, VideoMambaVideoTextConfig, VideoMambaVideoTextModel
from modeling_videomamba.video_text_training import load_caption_samples

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "trainer_scripts" / "run_video_text_retrieval.py"
sys.path.insert(0, str(REPO / "trainer_scripts"))
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "4",
          "--per_device_eval_batch_size", "4", "--seed", "0", "--dataloader_num_workers", "0", "--cache_decoded", "true",
          "--learning_rate", "1e-3", "--save_strategy", "no", "--rerank_k", "3"]
WORDS = ["a", "video", "of", "moving", "left", "right", "rotating", "clockwise", "counterclockwise", "growing", "shrinking"]


def _captions_csv(root: Path, split: Path, name: str) -> Path:
    """Two captions per clip of a class-folder split: 'a video of <class words>' and '<class words>'."""
    rows = []
    for video in sorted(split.glob("*/*.mp4")):
        words = video.parent.name.replace("_", " ")
        rows += [(os.path.relpath(video, root), f"a video of {words}"), (os.path.relpath(video, root), words)]
    path = root / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "caption"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def retrieval_setup(tmp_path_factory, synthetic_videos):
    """A tiny random VideoMambaVideoTextModel saved with a WordPiece vocabulary, and caption CSVs."""
    root = tmp_path_factory.mktemp("retrieval")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    config = VideoMambaVideoTextConfig(
        vision_config=VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=16, num_hidden_layers=1, dt_init="mamba"),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32),
        fusion_layer=1, projection_dim=8,
    )
    torch.manual_seed(0)
    VideoMambaVideoTextModel(config).save_pretrained(root / "model")
    (root / "model" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    train = _captions_csv(root, synthetic_videos / "train", "train.csv")
    validation = _captions_csv(root, synthetic_videos / "validation", "validation.csv")
    return root, train, validation


def test_caption_files_resolve_relative_paths_and_reject_bad_input(retrieval_setup, tmp_path):
    root, train, _ = retrieval_setup
    samples = load_caption_samples(train)
    assert len(samples) == 2 * 24 and all(Path(path).is_file() for path, _ in samples)
    import datasets

    rows = {"video": [path for path, _ in samples[:4]], "caption": [caption for _, caption in samples[:4]]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    assert load_caption_samples(dataset_name=str(tmp_path / "saved"), split="train") == samples[:4]
    (tmp_path / "bad.csv").write_text("clip,text\nx.mp4,hello\n")
    with pytest.raises(ValueError, match="no column 'video'"):
        load_caption_samples(tmp_path / "bad.csv")
    (tmp_path / "captions.txt").write_text("x.mp4 hello\n")
    with pytest.raises(ValueError, match="expected one of"):
        load_caption_samples(tmp_path / "captions.txt")
    with pytest.raises(OSError, match="does not exist"):
        load_caption_samples(tmp_path / "missing.csv")


def test_one_process_trains_evaluates_and_saves(retrieval_setup, tmp_path):
    import run_video_text_retrieval

    root, train, validation = retrieval_setup
    output = tmp_path / "run"
    run_video_text_retrieval.main([
        "--model_name_or_path", str(root / "model"), "--train_file", str(train), "--validation_file", str(validation),
        "--output_dir", str(output), "--do_train", "--do_eval", "--max_steps", "3", "--logging_steps", "1", *COMMON,
    ])
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    metrics = json.loads((output / "eval_results.json").read_text())
    for key in ("eval_t2v_r1", "eval_t2v_r5", "eval_t2v_r10", "eval_v2t_r1", "eval_t2v_median_rank", "eval_v2t_mean_rank",
                "eval_itm_t2v_r1", "eval_itm_v2t_mean_rank"):
        assert key in metrics, key
    # 8 validation clips, 16 captions: recall in [0, 100], ranks within the candidates.
    assert 0 <= metrics["eval_t2v_r1"] <= metrics["eval_t2v_r5"] <= 100 and 1 <= metrics["eval_t2v_mean_rank"] <= 8
    assert 1 <= metrics["eval_v2t_mean_rank"] <= 16
    _check_saved(output, root)


def _check_saved(output: Path, root: Path):
    """The saved model and processor reload and run, and training changed the weights."""
    model = AutoModel.from_pretrained(output).eval()
    processor = AutoProcessor.from_pretrained(output)
    clip = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8).numpy()
    batch = processor(videos=[clip], text=["a video of moving left", "rotating clockwise"])
    with torch.no_grad():
        out = model(**batch)
    assert out.logits_per_video.shape == (1, 2) and torch.isfinite(out.logits_per_video).all()
    initial = VideoMambaVideoTextModel.from_pretrained(root / "model")
    assert not torch.equal(initial.vision_proj.weight, model.vision_proj.weight)


def test_two_processes_train_with_the_gathered_loss(retrieval_setup, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU, --use_cpu true): each step consumes 2 x 4 pairs."""
    root, train, _ = retrieval_setup
    rows = train.read_text().splitlines()
    small = root / "train_small.csv"  # 4 clips, 2 captions each
    small.write_text("\n".join(rows[:9]) + "\n")
    output = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
        "--model_name_or_path", str(root / "model"), "--train_file", str(small), "--output_dir", str(output), "--do_train",
        "--num_train_epochs", "1", "--logging_steps", "1", "--use_cpu", "true", *COMMON,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    # 8 caption rows, 4 per process, 2 processes: 1 step (one process would take 2).
    assert state["global_step"] == 1
    _check_saved(output, root)
