"""Model cards of converted checkpoints (modeling_videomamba/model_card.py) and the upload of the directory."""

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from test_convert import original_state_dict

from modeling_videomamba.convert_original_checkpoint import convert_original_checkpoint, main
from modeling_videomamba.model_card import push_converted, released_results


def test_released_results_follow_the_release_tables():
    (k400,) = released_results("videomamba_t16_k400_f8_res224.pth")
    assert (k400.dataset_type, k400.metric_type, k400.metric_value) == ("kinetics-400", "accuracy", 76.9)
    assert "8x3x4 views" in k400.metric_name
    (coin,) = released_results("videomamba_m16_coin_mask_ft_f64_res224")
    assert (coin.dataset_name, coin.metric_value) == ("COIN", 90.4) and "64x3x10" in coin.metric_name
    (in1k,) = released_results("videomamba_s16_in1k_res224to448.pth")
    assert (in1k.task_type, in1k.metric_value) == ("image-classification", 83.2)
    (retrieval,) = released_results("videomamba_m16_25M_f8_res224.pth")
    assert (retrieval.dataset_type, retrieval.metric_type, retrieval.metric_value) == ("msr-vtt", "recall@1", 35.6)
    assert released_results("videomamba_m16_k400_mask_pt_f8_res224.pth") == []   # pretraining: no result stated
    assert released_results("my_finetune.pth") == [] and released_results(None) == []


def test_converted_directory_has_a_card_with_hub_metadata(tmp_path):
    path = tmp_path / "videomamba_t16_k400_f8_res224.pth"
    torch.save({"model": original_state_dict(classes=400)}, path)
    out = tmp_path / "converted"
    convert_original_checkpoint(path, out)
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "video-classification" and card.data.datasets == ["kinetics-400"]
    (result,) = card.data.eval_results
    assert (result.task_type, result.dataset_name, result.metric_value) == ("video-classification", "Kinetics-400", 76.9)
    assert "arxiv.org/abs/2403.06977" in card.text and "AutoModelForVideoClassification" in card.text
    assert "not re-measured" in card.text


def test_a_checkpoint_given_as_tensors_gets_a_card_without_results(tmp_path):
    convert_original_checkpoint({"model": original_state_dict(classes=0)}, tmp_path / "backbone")
    card = ModelCard.load(tmp_path / "backbone" / "README.md")
    assert card.data.eval_results is None and card.data.pipeline_tag == "feature-extraction"
    assert "states no result" in card.text


def test_push_to_hub_uploads_the_whole_directory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(("create", repo_id, kwargs)))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        calls.append(("upload", repo_id, sorted(p.name for p in (tmp_path / "out").iterdir())))
        assert folder_path == str(tmp_path / "out")

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    path = tmp_path / "videomamba_s16_ssv2_f8_res224.pth"
    torch.save({"model": original_state_dict(classes=174)}, path)
    main(["--checkpoint", str(path), "--output-dir", str(tmp_path / "out"), "--push-to-hub", "me/videomamba-s-ssv2",
          "--private"])
    assert calls[0] == ("create", "me/videomamba-s-ssv2", {"private": True, "exist_ok": True})
    uploaded = calls[1][2]
    for name in ("README.md", "config.json", "model.safetensors", "video_preprocessor_config.json",
                 "modeling_videomamba.py", "configuration_videomamba.py"):
        assert name in uploaded, (name, uploaded)
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        push_converted(tmp_path, "me/nothing")
