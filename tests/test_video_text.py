"""VideoMambaVideoTextModel: parity with the original multimodal model (../shared/fixtures/original/multimodal_a.pt),
conversion options, saving and remote code, the processor, the training loss (also across processes), and the
retrieval / zero-shot helpers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from remote_code import run_without_package
import torch.nn.functional as F
from transformers import AutoModel, AutoProcessor, BertConfig, BertTokenizer

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaModel,
    VideoMambaVideoProcessor,
    VideoMambaVideoTextConfig,
    VideoMambaVideoTextModel,
    VideoMambaVideoTextProcessor,
)
from modeling_videomamba.convert_original_checkpoint import convert_original_checkpoint
from modeling_videomamba.modeling_videomamba_video_text import video_text_contrastive_loss, video_text_similarity
from modeling_videomamba.video_text_retrieval import (
    best_match_ranks,
    rerank_with_matching,
    retrieval_metrics,
    zero_shot_video_classification,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path("fixtures") / "original" / "multimodal_a.pt"
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def _fixture_path():
    for candidate in (REPO.parent / "shared" / FIXTURE, REPO / "tests" / FIXTURE):
        if candidate.is_file():
            return candidate
    pytest.skip(f"the original multimodal fixture {FIXTURE} is not available")


@pytest.fixture(scope="module")
def original():
    return torch.load(_fixture_path(), weights_only=True)


@pytest.fixture(scope="module")
def converted_dir(original, tmp_path_factory):
    """The fixture's state dict converted as a released checkpoint would be: a `.pth` holding {"model": ...},
    the original BERT config JSON as --text-config, through the command line."""
    from modeling_videomamba.convert_original_checkpoint import main

    root = tmp_path_factory.mktemp("video_text")
    torch.save({"model": original["state_dict"], "epoch": 9}, root / "checkpoint.pth")
    (root / "config_bert.json").write_text(json.dumps(original["model_config"]["bert_config_json"]))
    main(["--checkpoint", str(root / "checkpoint.pth"), "--output-dir", str(root / "model"),
          "--text-config", str(root / "config_bert.json"), "--keep-temporal", "true"])
    return root / "model"


@pytest.fixture(scope="module")
def model(converted_dir):
    return AutoModel.from_pretrained(converted_dir).eval()


def tiny_vocab_dir(root: Path, size: int = 120) -> Path:
    """A WordPiece vocabulary laid out like bert-base-uncased's ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103) with a few words, cut to `size` entries."""
    words = ["a", "video", "of", "the", "dog", "cat", "running", "jumping", "person", "guitar", "playing", "##s"]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += [f"w{i}" for i in range(size - len(vocab))]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(vocab[:size]) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------
# Parity with the original
# ---------------------------------------------------------------------------------------------------


def test_converted_model_reproduces_the_original(model, original):
    config = model.config
    assert (config.fusion_layer, config.projection_dim, config.keep_temporal) == (2, 32, True)
    assert (config.text_config.num_attention_heads, config.text_config.num_hidden_layers) == (4, 4)
    assert (config.vision_config.num_frames, config.vision_config.hidden_size, config.vision_config.image_size) == (4, 64, 32)
    with torch.no_grad():
        out = model(original["pixel_values"], original["input_ids"], original["attention_mask"])
        torch.testing.assert_close(out.logits_per_video * model.temp, original["sim_v2t"], **TOLERANCE)
        torch.testing.assert_close(out.logits_per_text * model.temp, original["sim_t2v"], **TOLERANCE)
        torch.testing.assert_close(out.text_embeds, original["text_features"], **TOLERANCE)
        torch.testing.assert_close(out.video_embeds, original["vision_features"], **TOLERANCE)
        torch.testing.assert_close(out.video_tokens, original["vision_embeds"], **TOLERANCE)
        torch.testing.assert_close(out.text_last_hidden_state, original["text_embeds"], **TOLERANCE)
        itm = model.video_text_matching(original["pixel_values"], original["input_ids"], original["attention_mask"])
        torch.testing.assert_close(itm, original["itm_logits"], **TOLERANCE)
        # From precomputed video tokens and text states (the re-ranking path).
        itm = model.video_text_matching(
            video_tokens=out.video_tokens, text_hidden_states=out.text_last_hidden_state,
            attention_mask=original["attention_mask"],
        )
        torch.testing.assert_close(itm, original["itm_logits"], **TOLERANCE)
        torch.testing.assert_close(model.get_video_features(original["pixel_values"]), original["vision_features"], **TOLERANCE)
        torch.testing.assert_close(
            model.get_text_features(original["input_ids"], original["attention_mask"]), original["text_features"], **TOLERANCE
        )


def test_reranking_reproduces_the_original_evaluation_scores(model, original):
    with torch.no_grad():
        video = model.encode_video(original["pixel_values"])
        text = model.encode_text(original["input_ids"], original["attention_mask"])
        similarity = video_text_similarity(video.video_embeds, text.text_embeds)
        v2t, t2v = rerank_with_matching(
            model, similarity, video.video_tokens, text.last_hidden_state, original["attention_mask"], k=128
        )
        torch.testing.assert_close(v2t, original["itm_scores"], **TOLERANCE)
        torch.testing.assert_close(t2v, original["itm_scores_t2i"], **TOLERANCE)
        # With k=1 only the similarity's best candidate is re-scored; it stays first.
        v2t, t2v = rerank_with_matching(model, similarity, video.video_tokens, text.last_hidden_state, original["attention_mask"], k=1)
        assert torch.equal(v2t.argmax(1), similarity.argmax(1)) and torch.equal(t2v.argmax(1), similarity.t().argmax(1))
        torch.testing.assert_close(v2t.max(1).values, original["itm_scores"].gather(1, similarity.argmax(1, keepdim=True))[:, 0], **TOLERANCE)


# ---------------------------------------------------------------------------------------------------
# Conversion options, saving, remote code
# ---------------------------------------------------------------------------------------------------


def test_keep_temporal_false_and_vision_only(original):
    checkpoint = {"model": original["state_dict"]}
    bert = original["model_config"]["bert_config_json"]
    clip_level = convert_original_checkpoint(checkpoint, text_config=bert, keep_temporal=False)
    assert clip_level.config.keep_temporal is False
    with torch.no_grad():
        video = clip_level.encode_video(original["pixel_values"])
        assert video.video_embeds.shape == (3, 1, 32)
        cls, tokens = video.vision_model_output.last_hidden_state[:, :1], video.video_tokens
        expected = F.normalize(clip_level.vision_proj(clip_level.pool_norm(cls + tokens.mean(1, keepdim=True))), dim=-1)
        torch.testing.assert_close(video.video_embeds, expected)
    tower = convert_original_checkpoint(checkpoint, vision_only=True)
    assert type(tower) is VideoMambaModel
    with torch.no_grad():
        torch.testing.assert_close(tower(original["pixel_values"]).last_hidden_state, original["vision_last_hidden_state"], **TOLERANCE)


def test_released_layout_bf16_with_clip_teacher_and_the_zero_shot_renaming_convert(original, caplog):
    """As a released file: bf16 tensors and a `clip_teacher.*` tower; also the zero-shot layout (`text_encoder.X`,
    no MLM head). Unknown keys stop the conversion."""
    import logging

    bert = original["model_config"]["bert_config_json"]
    released = {key: value.bfloat16() if value.is_floating_point() else value for key, value in original["state_dict"].items()}
    released["clip_teacher.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(6, 2, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="modeling_videomamba.convert_original_checkpoint"):
        model = convert_original_checkpoint({"model": released}, text_config=bert)
    assert "CLIP teacher of the pre-training" in caplog.text and "masked-language-model head" in caplog.text
    assert model.itm_head.weight.dtype == torch.float32
    torch.testing.assert_close(model.itm_head.weight, original["state_dict"]["itm_head.weight"].bfloat16().float())
    zero_shot = {key.replace("text_encoder.bert.", "text_encoder."): value for key, value in original["state_dict"].items()
                 if not key.startswith("text_encoder.cls.")}
    model = convert_original_checkpoint(zero_shot, text_config=bert)
    with torch.no_grad():
        logits = model(original["pixel_values"], original["input_ids"], original["attention_mask"]).logits_per_video
    torch.testing.assert_close(logits * model.temp.detach(), original["sim_v2t"], **TOLERANCE)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): \['extra_head.weight'\]"):
        convert_original_checkpoint(dict(zero_shot, **{"extra_head.weight": torch.zeros(2)}), text_config=bert)


def test_text_config_contradicting_the_tensors_is_refused(original, tmp_path):
    bert = dict(original["model_config"]["bert_config_json"], intermediate_size=128)
    with pytest.raises(ValueError, match="intermediate_size: config 128, tensors 96"):
        convert_original_checkpoint({"model": original["state_dict"]}, text_config=bert)
    with pytest.raises(ValueError, match="fusion_layer 3, the tensors 2"):
        convert_original_checkpoint({"model": original["state_dict"]}, text_config=dict(bert, intermediate_size=96, fusion_layer=3))
    with pytest.raises(FileNotFoundError, match="BertConfig JSON"):
        convert_original_checkpoint({"model": original["state_dict"]}, text_config=tmp_path / "missing.json")
    # Without the original BERT config the sizes still come from the tensors, the heads from BERT-base (12).
    default = convert_original_checkpoint({"model": original["state_dict"]})
    assert default.config.text_config.num_attention_heads == 12 and default.config.text_config.hidden_size == 48


def test_saved_directory_reloads_with_the_same_outputs(model, converted_dir, original):
    names = {p.name for p in converted_dir.iterdir()}
    assert {"model.safetensors", "config.json", "video_preprocessor_config.json", "modeling_videomamba_video_text.py",
            "configuration_videomamba_video_text.py", "modeling_videomamba.py"} <= names
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_videomamba_video_text.VideoMambaVideoTextModel"
    assert config["model_type"] == "videomamba_video_text" and config["text_config"]["num_attention_heads"] == 4
    resaved = converted_dir.parent / "resaved"
    model.save_pretrained(resaved)
    reloaded = VideoMambaVideoTextModel.from_pretrained(resaved).eval()
    inputs = (original["pixel_values"], original["input_ids"], original["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*inputs).logits_per_video, model(*inputs).logits_per_video, atol=0, rtol=0)
        torch.testing.assert_close(reloaded.video_text_matching(*inputs), model.video_text_matching(*inputs), atol=0, rtol=0)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import AutoModel

    directory = {directory!r}
    inputs = torch.load({inputs!r})
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    with torch.no_grad():
        out = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        itm = model.video_text_matching(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    torch.save({{"logits_per_video": out.logits_per_video, "itm": itm}}, {outputs!r})
    print("REMOTE-OK")
    """
)


def test_saved_directory_loads_with_trust_remote_code_without_the_package(converted_dir, model, original, tmp_path):
    inputs = {key: original[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    torch.save(inputs, tmp_path / "inputs.pt")
    script = REMOTE_SCRIPT.format(directory=str(converted_dir), inputs=str(tmp_path / "inputs.pt"), outputs=str(tmp_path / "out.pt"))
    result = run_without_package(script, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-OK" in result.stdout
    outputs = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(outputs["logits_per_video"] * model.temp.detach(), original["sim_v2t"], **TOLERANCE)
    torch.testing.assert_close(outputs["itm"], original["itm_logits"], **TOLERANCE)


# ---------------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------------


def test_processor_tokenises_and_processes_and_round_trips(tmp_path, model):
    tokenizer = BertTokenizer.from_pretrained(str(tiny_vocab_dir(tmp_path / "vocab")))
    processor = VideoMambaVideoTextProcessor(VideoMambaVideoProcessor.from_model_config(model.config.vision_config), tokenizer)
    clip = torch.randint(0, 256, (10, 40, 48, 3), dtype=torch.uint8).numpy()
    batch = processor(videos=[clip], text=["A video of the dogs", "a cat"])
    assert batch["pixel_values"].shape == (1, 4, 3, 32, 32)
    assert batch["input_ids"].tolist()[0] == [101, 104, 105, 106, 107, 108, 115, 102]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert "token_type_ids" not in batch
    processor.save_pretrained(tmp_path / "saved")
    model.config.save_pretrained(tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is VideoMambaVideoTextProcessor
    again = reloaded(videos=[clip], text=["A video of the dogs", "a cat"])
    assert torch.equal(again["input_ids"], batch["input_ids"]) and torch.equal(again["pixel_values"], batch["pixel_values"])
    with pytest.raises(ValueError, match="needs a `tokenizer`"):
        VideoMambaVideoTextProcessor(processor.video_processor)


# ---------------------------------------------------------------------------------------------------
# Retrieval and zero-shot helpers
# ---------------------------------------------------------------------------------------------------


def test_retrieval_metrics_on_a_hand_checked_case():
    # 3 videos, 4 captions; captions 0 and 1 describe video 0, caption 2 video 1, caption 3 video 2.
    scores = torch.tensor([
        [0.9, 0.1, 0.8, 0.0],   # video 0: captions by score 0, 2, 1, 3 -> its best caption (0) at rank 1
        [0.2, 0.3, 0.1, 0.5],   # video 1: 3, 1, 0, 2 -> caption 2 at rank 4
        [0.4, 0.6, 0.7, 0.65],  # video 2: 2, 3, 1, 0 -> caption 3 at rank 2
    ])
    text_to_video = [0, 0, 1, 2]
    # Text queries (columns): caption 0 -> videos 0, 2, 1: rank 1; caption 1 -> 2, 1, 0: rank 3;
    # caption 2 -> 0, 2, 1: rank 3; caption 3 -> 2, 1, 0: rank 1.
    metrics = retrieval_metrics(scores, text_to_video, ks=(1, 2, 5))
    assert metrics["t2v_r1"] == pytest.approx(50.0) and metrics["t2v_r2"] == pytest.approx(50.0)
    assert metrics["t2v_r5"] == pytest.approx(100.0)
    assert metrics["t2v_median_rank"] == 2.0 and metrics["t2v_mean_rank"] == pytest.approx(2.0)
    assert metrics["v2t_r1"] == pytest.approx(100 / 3) and metrics["v2t_r2"] == pytest.approx(200 / 3)
    assert metrics["v2t_median_rank"] == 2.0 and metrics["v2t_mean_rank"] == pytest.approx(7 / 3)
    # Separate text->video scores (e.g. re-ranked) are used for t2v only.
    perfect_t2v = torch.nn.functional.one_hot(torch.tensor(text_to_video), 3).float()
    metrics = retrieval_metrics(scores, text_to_video, text_to_video_scores=perfect_t2v)
    assert metrics["t2v_r1"] == 100.0 and metrics["t2v_mean_rank"] == 1.0 and metrics["v2t_r1"] == pytest.approx(100 / 3)
    # A constant score is no hit.
    assert best_match_ranks(torch.zeros(2, 3), torch.eye(2, 3, dtype=torch.bool)).tolist() == [3, 3]
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(scores, [0, 0, 1, 3])


def test_zero_shot_classification_scores_label_prompts(model, original, tmp_path):
    tokenizer = BertTokenizer.from_pretrained(str(tiny_vocab_dir(tmp_path / "vocab")))
    labels = ["dog", "cat", "playing guitar"]
    logits = zero_shot_video_classification(model, tokenizer, original["pixel_values"], labels)
    assert logits.shape == (3, 3)
    prompts = tokenizer([f"a video of {label}." for label in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(original["pixel_values"], prompts["input_ids"], prompts["attention_mask"]).logits_per_video
    torch.testing.assert_close(logits, reference)
    # Padding the prompts to another length changes nothing (the padding mask is honoured).
    padded = tokenizer([f"a video of {label}." for label in labels], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(original["pixel_values"], padded["input_ids"], padded["attention_mask"]).logits_per_video, reference, **TOLERANCE)


# ---------------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------------


def tiny_config(**overrides):
    return VideoMambaVideoTextConfig(
        vision_config=VideoMambaConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=16, num_hidden_layers=1),
        text_config=BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=16),
        fusion_layer=1, projection_dim=8, **overrides,
    )


def test_training_loss_is_contrastive_plus_matching_and_reaches_both_towers():
    torch.manual_seed(0)
    model = VideoMambaVideoTextModel(tiny_config(matching_loss_weight=0.5)).train()
    pixel_values, input_ids = torch.randn(4, 2, 3, 16, 16), torch.randint(1, 30, (4, 6))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    out = model(pixel_values, input_ids, attention_mask, return_loss=True)
    logits = out.logits_per_video
    reference = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
    torch.testing.assert_close(out.contrastive_loss, reference)
    torch.testing.assert_close(out.loss, out.contrastive_loss + 0.5 * out.matching_loss)
    assert out.matching_loss > 0
    out.loss.backward()
    for name in ("temp", "vision_proj.weight", "text_proj.weight", "itm_head.weight",
                 "vision_model.layers.0.mixer.in_proj.weight", "text_model.encoder.layer.1.crossattention.self.key.weight",
                 "text_model.embeddings.word_embeddings.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # Pairs sharing a video id are all positives.
    ids = torch.tensor([0, 0, 1, 2])
    shared = video_text_contrastive_loss(out.video_embeds.detach(), out.text_embeds.detach(), model.temp.detach(), ids)
    targets = (ids[:, None] == ids[None]).float()
    targets = targets / targets.sum(1, keepdim=True)
    logits = logits.detach()
    expected = (-(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.t().log_softmax(1)).sum(1).mean()) / 2
    torch.testing.assert_close(shared, expected)
    with pytest.raises(ValueError, match="matching pairs"):
        model(pixel_values, input_ids[:3], attention_mask[:3], return_loss=True)


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    from modeling_videomamba.modeling_videomamba_video_text import video_text_contrastive_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.load(sys.argv[1])
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"video": torch.nn.Linear(8, 6), "text": torch.nn.Linear(5, 6)})
    part = slice(rank * 3, rank * 3 + 3)
    video = torch.nn.functional.normalize(model["video"](data["videos"][part]), dim=-1)
    text = torch.nn.functional.normalize(model["text"](data["texts"][part]), dim=-1)
    loss = video_text_contrastive_loss(video, text, torch.tensor(0.1), data["ids"][part])
    loss.backward()
    for parameter in model.parameters():  # what DDP does to the gradients: average them over the processes
        dist.all_reduce(parameter.grad)
        parameter.grad /= world
    torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in model.named_parameters()}}, sys.argv[2] + f".{rank}")
    dist.destroy_process_group()
    """
)


def test_contrastive_loss_across_processes_equals_one_process_on_the_global_batch(tmp_path):
    """Two gloo processes, 3 pairs each: the gathered loss and the (DDP-averaged) gradients equal those of one
    process on the 6 pairs."""
    generator = torch.Generator().manual_seed(1)
    data = {"videos": torch.randn(6, 2, 8, generator=generator), "texts": torch.randn(6, 5, generator=generator),
            "ids": torch.tensor([0, 1, 2, 2, 3, 0])}  # ids shared across the two processes' halves
    torch.save(data, tmp_path / "data.pt")
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "ddp.py"), str(tmp_path / "data.pt"), str(tmp_path / "out")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"video": torch.nn.Linear(8, 6), "text": torch.nn.Linear(5, 6)})
    video = F.normalize(model["video"](data["videos"]), dim=-1)
    text = F.normalize(model["text"](data["texts"]), dim=-1)
    loss = video_text_contrastive_loss(video, text, torch.tensor(0.1), data["ids"])
    loss.backward()
    for rank in (0, 1):
        result = torch.load(tmp_path / f"out.{rank}")
        torch.testing.assert_close(result["loss"], loss.detach())
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(result["grads"][name], parameter.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_config_validation_and_pooling_modes():
    with pytest.raises(ValueError, match=r"fusion_layer must be an integer in \[0, 2\)"):
        tiny_config().__class__(text_config=BertConfig(num_hidden_layers=2), fusion_layer=2)
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_config(pooling="max")
    pixel_values = torch.randn(2, 2, 3, 16, 16)
    torch.manual_seed(0)
    model = VideoMambaVideoTextModel(tiny_config()).eval()
    with torch.no_grad():
        hidden = model.vision_model(pixel_values).last_hidden_state
        cls, frames = hidden[:, :1], hidden[:, 1:].reshape(2, 2, 4, 16).mean(2)
        for pooling, expected in (("cls", cls), ("avg", frames), ("cls+avg", cls + frames)):
            model.config.pooling = pooling
            embeds = model.get_video_features(pixel_values)
            torch.testing.assert_close(embeds, F.normalize(model.vision_proj(model.pool_norm(expected)), dim=-1))
        with pytest.raises(ValueError, match=r"pixel_values must be \(videos, frames"):
            model.get_video_features(pixel_values[0])
        with pytest.raises(ValueError, match="Pass exactly one of pixel_values and video_tokens"):
            model.video_text_matching(input_ids=torch.ones(1, 3, dtype=torch.long))


def test_half_precision_and_gradient_checkpointing_run(converted_dir, original):
    bf16 = VideoMambaVideoTextModel.from_pretrained(converted_dir, dtype=torch.bfloat16).eval()
    assert bf16.vision_model.layers[0].mixer.A_log.dtype == torch.float32 and bf16.itm_head.weight.dtype == torch.bfloat16
    inputs = (original["pixel_values"], original["input_ids"], original["attention_mask"])
    with torch.no_grad():
        out = bf16(*inputs)
        torch.testing.assert_close(out.logits_per_video * bf16.temp.float(), original["sim_v2t"], atol=0.05, rtol=0)
        assert bf16.video_text_matching(*inputs).shape == (3, 4, 2)
    torch.manual_seed(0)
    model = VideoMambaVideoTextModel(tiny_config(hard_negatives=False)).train()
    model.activation_checkpointing_enable()
    loss = model(torch.randn(3, 2, 3, 16, 16), torch.randint(1, 30, (3, 5)), torch.ones(3, 5, dtype=torch.long), return_loss=True).loss
    loss.backward()
    assert model.text_model.encoder.layer[1].crossattention.self.value.weight.grad is not None
