"""Sharded training: FSDP2 through `modeling_videomamba.sharding.shard_model` against unsharded training (one
`torchrun` of two gloo processes on CPU, tests/sharding_phases.py), and the Trainer's FSDP config
(trainer_scripts/configs/fsdp2.json) as transformers and accelerate read it.

What "equal" means here. Sharded, each rank computes its half of the global batch and FSDP averages the two
halves' gradients in a reduce-scatter; unsharded, one process sums over the whole batch at once. In float32 the
additions then happen in a different order (and some kernels block differently for 2 samples than for 4),
so results agree to rounding, not bit for bit: measured, losses within 2e-7 relative, gradients and
parameters within 6e-6 of each tensor's largest entry. The tolerances below leave a margin of about 20x and
are still far below what a real fault gives: a rank's half missing, or gradients summed instead of
averaged, is an error of order 1.
"""

import json
import types
from pathlib import Path

import pytest
import torch

from modeling_videomamba.sharding import shard_model
from sharding_phases import build
from torchrun_launch import run_two_processes

REPO = Path(__file__).resolve().parents[1]
FSDP_CONFIG = REPO / "trainer_scripts" / "configs" / "fsdp2.json"
LOSS_TOLERANCE = 2e-6  # relative
TENSOR_TOLERANCE = 1e-4  # max |error| / max |reference| over a tensor


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    run_two_processes("sharding_phases.py", root)
    return json.loads((root / "results.json").read_text())


def assert_equal_training(phase):
    for step, loss in enumerate(phase["loss"]):
        assert loss["relative"] < LOSS_TOLERANCE, (step, loss)
    for what in ("grad", "param"):
        for step, error in enumerate(phase[what]):
            assert error["max"] < TENSOR_TOLERANCE, (what, step, error)


def test_sharded_loss_gradients_and_adamw_steps_equal_unsharded_training(results):
    """Two AdamW steps, "fast" scan, one FSDP group per block: loss, every gradient, every parameter after each step."""
    assert results["world_size"] == 2
    phase = results["fp32_fast"]
    assert len(phase["loss"]) == len(phase["grad"]) == len(phase["param"]) == 2
    assert_equal_training(phase)


def test_native_scan_with_activation_checkpointing_and_no_resharding_equals_unsharded(results):
    """The compiled CPU scan under FSDP, with the model's own activation checkpointing on both sides and
    `reshard_after_forward=False` (ZeRO-2-like)."""
    if not results["native_scan_available"]:
        pytest.skip("the native scan could not be built here (see test_native_scan.py for why)")
    assert_equal_training(results["fp32_native_checkpointing"])


def test_bf16_policy_keeps_ssm_parameters_and_residual_stream_fp32_and_trains(results):
    phase = results["bf16_policy"]
    seen = phase["seen"]
    assert seen["in_proj.weight"] == seen["mixer input"] == "torch.bfloat16", seen
    assert all(seen[name] == "torch.float32" for name in ("A_log", "A_b_log", "D", "D_b")), seen
    assert seen["block input (residual stream)"] == "torch.float32", seen
    assert phase["master_dtypes"] == ["torch.float32"]  # what the optimizer updates
    # bf16 rounding (8 significant bits) through the network: close to fp32, not equal to it.
    assert abs(phase["losses"][0] - phase["reference_first_loss"]) < 1e-2 * phase["reference_first_loss"]
    assert phase["first_grads_vs_fp32"]["max"] < 0.2, phase["first_grads_vs_fp32"]
    losses = phase["losses"]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_bf16_weights_with_fp32_ssm_parameters_need_their_own_group(results):
    """As `from_pretrained(dtype=torch.bfloat16)` loads it: FSDP2 refuses one group per block, shard_model trains it."""
    phase = results["bf16_weights_fp32_ssm"]
    assert "uniform original parameter dtype" in phase["plain_fully_shard_error"]
    assert all(dtype == "torch.float32" for name, dtype in phase["dtypes"].items() if name.endswith("A_log"))
    assert all(dtype == "torch.bfloat16" for name, dtype in phase["dtypes"].items() if name.endswith("in_proj.weight"))
    assert phase["losses"][-1] < phase["losses"][0], phase["losses"]


def test_activation_checkpointing_adds_no_all_gathers_under_fsdp2(results):
    """Forward: the root and every block gather once; backward: every block again (reshard_after_forward=True).
    The recompute of a checkpointed block runs while FSDP2 is in its pre-backward state, so it reuses that
    gather, whichever checkpointing applies: no redundant all-gather, which transformers' warning about
    `--activation_checkpointing` with FSDP would suggest. With bf16
    compute each block's fp32 A/D group is one more (small) gather, forward and backward."""
    counts = results["all_gathers_per_step"]
    layers = counts["layers"]
    assert counts["plain"] == counts["model_checkpointing"] == counts["checkpoint_wrapper"] == 1 + 2 * layers, counts
    assert counts["plain_bf16"] == 1 + 4 * layers, counts


def test_distributed_checkpoint_reloads_into_a_freshly_sharded_model(results):
    phase = results["distributed_checkpoint"]
    assert phase["before_load"]["max"] > 0.1  # the fresh model (another seed) really started elsewhere
    assert phase["after_load"]["max"] == 0.0, phase["after_load"]
    continued, reloaded = phase["next_losses"]
    assert continued == reloaded
    # Optimizer state came back too: the same AdamW step from the same moments.
    assert phase["after_a_step"]["max"] < TENSOR_TOLERANCE, phase["after_a_step"]


def test_gathered_state_dict_survives_save_pretrained_and_from_pretrained(results):
    phase = results["full_state_dict"]
    assert phase["keys_match"] and phase["mismatched"] == [], phase
    assert phase["dtypes"] == ["torch.float32"]
    assert phase["logits_relative"] < TENSOR_TOLERANCE


def test_shard_model_needs_videomamba_blocks():
    with pytest.raises(ValueError, match="VideoMambaLayer blocks; Linear has none"):
        shard_model(torch.nn.Linear(2, 2))


def test_shard_model_refuses_a_sharded_model(results):
    assert "already sharded" in results["sharding_twice_error"]


def _trainer_fsdp_plugin(monkeypatch, *flags):
    """The FSDP plugin the Trainer hands accelerate when run_video_classification.py gets `flags`."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    monkeypatch.syspath_prepend(str(REPO / "trainer_scripts"))
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it; restored afterwards
    from run_video_classification import DataTrainingArguments, ModelArguments, TrainingArguments
    from script_utils import parse_script_arguments

    argv = ["--train_dir", "unused", "--output_dir", "unused", "--use_cpu", "true", "--report_to", "none", *map(str, flags)]
    _, _, args = parse_script_arguments((ModelArguments, DataTrainingArguments, TrainingArguments), argv)
    return FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)


def test_trainer_fsdp_flags_give_each_videomamba_layer_its_own_group(monkeypatch):
    """`--fsdp --fsdp_config trainer_scripts/configs/fsdp2.json`, as the README has it, and the legacy string form."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    for fsdp in (["--fsdp"], ["--fsdp", "full_shard auto_wrap"]):
        plugin = _trainer_fsdp_plugin(monkeypatch, *fsdp, "--fsdp_config", FSDP_CONFIG)
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True and not plugin.activation_checkpointing
        model = build(num_hidden_layers=3)
        plugin.set_auto_wrap_policy(model)
        wraps = fsdp2_prepare_auto_wrap_policy(plugin, model)
        assert [name for name, module in model.named_modules() if wraps(module)] == [f"videomamba.layers.{i}" for i in range(3)]


def _gradients(model, pixel_values, labels):
    torch.manual_seed(1)  # the drop-path masks
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    return torch.cat([parameter.grad.flatten() for parameter in model.parameters()])


def test_accelerate_fsdp_activation_checkpointing_redraws_drop_path_masks(monkeypatch, tmp_path):
    """Why the README sends drop_path_rate > 0 runs to `--activation_checkpointing` rather than fsdp_config's:
    accelerate's FSDP2 checkpoint wrapper does not replay the RNG, so the recomputed block drops other samples
    than the forward did and the gradients are wrong; the model's own checkpointing replays it and is exact."""
    from accelerate.utils.fsdp_utils import fsdp2_apply_ac

    config = tmp_path / "fsdp2_checkpointing.json"
    config.write_text(json.dumps({**json.loads(FSDP_CONFIG.read_text()), "activation_checkpointing": True}))
    plugin = _trainer_fsdp_plugin(monkeypatch, "--fsdp", "--fsdp_config", config)
    assert plugin.activation_checkpointing
    accelerator = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin))  # all fsdp2_apply_ac reads
    pixel_values, labels = torch.randn(4, 4, 3, 32, 32), torch.tensor([0, 1, 2, 0])

    def relative_error(model, drop_path_rate):
        reference = _gradients(build(drop_path_rate=drop_path_rate), pixel_values, labels)
        return ((_gradients(model, pixel_values, labels) - reference).abs().max() / reference.abs().max()).item()

    assert relative_error(fsdp2_apply_ac(accelerator, build(drop_path_rate=0.0)), 0.0) < TENSOR_TOLERANCE
    wrapped = fsdp2_apply_ac(accelerator, build(drop_path_rate=0.5))
    assert all(type(layer).__name__ == "CheckpointWrapper" for layer in wrapped.videomamba.layers)
    assert relative_error(wrapped, 0.5) > 0.1
    own = build(drop_path_rate=0.5)
    own.activation_checkpointing_enable()
    assert relative_error(own, 0.5) < TENSOR_TOLERANCE
