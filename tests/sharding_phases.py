"""Worker for test_sharding.py, started by `torchrun --standalone --nproc_per_node 2` (gloo on CPU).

Every phase trains a FSDP2-sharded model (`shard_model`) next to the same model unsharded, which each rank
runs on the whole global batch while the sharded one sees only its rank's half. Rank 0 writes what it
measured to OUTPUT_ROOT/results.json; the test asserts on it (a crash anywhere fails the run).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/sharding_phases.py OUTPUT_ROOT
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp._fully_shard import _fsdp_param_group
from torch.distributed.tensor import DTensor

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba.native_scan import native_scan_available
from modeling_videomamba.sharding import shard_model

CONFIG = dict(hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=3)
GLOBAL_BATCH = 4
SSM_NAMES = ("A_log", "A_b_log", "D", "D_b")


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return VideoMambaForVideoClassification(VideoMambaConfig(**{**CONFIG, **overrides}))


def global_batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 4, 3, 32, 32, generator=generator), torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator)


def local_part(tensor):
    """This rank's contiguous share of the global batch."""
    share = len(tensor) // dist.get_world_size()
    return tensor[dist.get_rank() * share : (dist.get_rank() + 1) * share]


def full(tensor):
    """A sharded DTensor gathered to the whole tensor (plain tensors pass through)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def sharded_loss(model, pixel_values, labels):
    """Backward of this rank's mean loss on its half; returns the global-batch mean (equal halves)."""
    loss = model(pixel_values=local_part(pixel_values), labels=local_part(labels)).loss
    loss.backward()
    averaged = loss.detach().clone()
    dist.all_reduce(averaged)
    return (averaged / dist.get_world_size()).item()


def reference_loss(model, pixel_values, labels):
    loss = model(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    return loss.item()


def relative_error(value, reference):
    """max |value - reference| over the tensor, relative to the tensor's largest |reference| entry."""
    value, reference = full(value).double(), full(reference).double()
    return ((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def worst(errors):
    name = max(errors, key=errors.get)
    return {"max": errors[name], "where": name}


def compare(sharded, reference, what):
    """Worst relative error over parameters (`what`: "grad" or "data"), with the parameter it occurs in."""
    references = dict(reference.named_parameters())
    errors = {}
    for name, parameter in sharded.named_parameters():
        mine, theirs = (parameter.grad, references[name].grad) if what == "grad" else (parameter, references[name])
        if theirs is None:
            if mine is not None:
                errors[name] = float("inf")
            continue
        errors[name] = relative_error(mine, theirs)
    return worst(errors)


def equal_training(overrides, checkpointing=False, steps=2, **sharding):
    """Loss, every gradient and (after AdamW steps) every parameter of sharded vs unsharded training."""
    reference, sharded = build(**overrides), shard_model(build(**overrides), **sharding)
    if checkpointing:
        reference.activation_checkpointing_enable()
        sharded.activation_checkpointing_enable()
    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-3) for model in (reference, sharded)]
    result = {"loss": [], "grad": [], "param": []}
    for step in range(steps):
        pixel_values, labels = global_batch(step)
        ref, mine = reference_loss(reference, pixel_values, labels), sharded_loss(sharded, pixel_values, labels)
        result["loss"].append({"reference": ref, "sharded": mine, "relative": abs(mine - ref) / abs(ref)})
        result["grad"].append(compare(sharded, reference, "grad"))
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
        result["param"].append(compare(sharded, reference, "data"))
    return result, sharded, optimizers[1]


def forward_dtypes(model):
    """{what: dtype} as the first mixer sees them in its forward (after FSDP gathered and cast its groups)."""
    seen = {}
    layer = model.videomamba.layers[0]

    def record_layer(module, args):
        seen.setdefault("block input (residual stream)", str(args[0].dtype))

    def record_mixer(module, args):
        seen.setdefault("mixer input", str(args[0].dtype))
        seen.setdefault("in_proj.weight", str(module.in_proj.weight.dtype))
        for name in SSM_NAMES:
            seen.setdefault(name, str(getattr(module, name).dtype))

    handles = [layer.register_forward_pre_hook(record_layer), layer.mixer.register_forward_pre_hook(record_mixer)]
    return seen, handles


def mixed_precision_training(steps=6):
    """bf16 compute (fp32 reduction and optimizer state) on a fixed batch: dtypes seen, loss per step."""
    reference = build()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    model = shard_model(build(), mp_policy=policy)
    seen, handles = forward_dtypes(model)
    pixel_values, labels = global_batch(0)
    first_reference = reference_loss(reference, pixel_values, labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        losses.append(sharded_loss(model, pixel_values, labels))
        if step == 0:
            for handle in handles:
                handle.remove()
            first_grads = compare(model, reference, "grad")
        optimizer.step()
        optimizer.zero_grad()
    return {
        "seen": seen,
        "master_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "losses": losses,
        "reference_first_loss": first_reference,
        "first_grads_vs_fp32": first_grads,
    }


def half_model_with_fp32_ssm():
    """A model as `from_pretrained(dtype=torch.bfloat16)` holds it: bf16 weights, A_log/D kept in fp32."""
    model = build().to(torch.bfloat16)
    for module in model.modules():
        for name in SSM_NAMES:
            if isinstance(getattr(module, name, None), torch.nn.Parameter):
                getattr(module, name).data = getattr(module, name).data.float()
    return model


def half_model_phase():
    """One group per block fails on mixed dtypes; shard_model splits A/D off and trains."""
    plain = half_model_with_fp32_ssm()
    for layer in plain.videomamba.layers:
        fully_shard(layer)
    fully_shard(plain)
    pixel_values, labels = global_batch(0)
    try:
        plain(pixel_values=local_part(pixel_values).bfloat16(), labels=local_part(labels))
        plain_error = None
    except AssertionError as error:
        plain_error = str(error)
    model = shard_model(half_model_with_fp32_ssm())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        losses.append(sharded_loss(model, pixel_values.bfloat16(), labels))
        optimizer.step()
        optimizer.zero_grad()
    dtypes = {name: str(p.dtype) for name, p in model.named_parameters() if name.endswith(("A_log", "in_proj.weight"))}
    return {"plain_fully_shard_error": plain_error, "losses": losses, "dtypes": dtypes}


def all_gathers_in_a_step(model):
    """How many parameter all-gathers one forward and backward issues (counted where FSDP2 calls its collective)."""
    original, calls = _fsdp_param_group.foreach_all_gather, []

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    _fsdp_param_group.foreach_all_gather = counting
    try:
        sharded_loss(model, *global_batch(0))
    finally:
        _fsdp_param_group.foreach_all_gather = original
    return len(calls)


def all_gathers_phase():
    """All-gathers per step without checkpointing, with the model's own and with torch's checkpoint wrapper
    (what accelerate applies for fsdp_config's activation_checkpointing), and with bf16 compute."""
    own = build()
    own.activation_checkpointing_enable()
    wrapped = build()
    for index, layer in enumerate(wrapped.videomamba.layers):
        wrapped.videomamba.layers[index] = checkpoint_wrapper(layer, preserve_rng_state=False)
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    models = {"plain": build(), "model_checkpointing": own, "checkpoint_wrapper": wrapped}
    counts = {name: all_gathers_in_a_step(shard_model(model)) for name, model in models.items()}
    counts["plain_bf16"] = all_gathers_in_a_step(shard_model(build(), mp_policy=bf16))
    return {"layers": CONFIG["num_hidden_layers"], **counts}


def distributed_checkpoint_phase(model, optimizer, folder):
    """dcp.save model + optimizer, load into a freshly built (other seed) and sharded model, continue both."""
    state = dict(zip(("model", "optimizer"), get_state_dict(model, optimizer)))
    dcp.save(state, checkpoint_id=str(folder))
    fresh = shard_model(build(seed=1))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    before = compare(fresh, model, "data")
    loaded = dict(zip(("model", "optimizer"), get_state_dict(fresh, fresh_optimizer)))
    dcp.load(loaded, checkpoint_id=str(folder))
    set_state_dict(fresh, fresh_optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    after = compare(fresh, model, "data")
    pixel_values, labels = global_batch(5)
    losses = []
    for candidate, candidate_optimizer in ((model, optimizer), (fresh, fresh_optimizer)):
        losses.append(sharded_loss(candidate, pixel_values, labels))
        candidate_optimizer.step()
        candidate_optimizer.zero_grad()
    return {"before_load": before, "after_load": after, "next_losses": losses, "after_a_step": compare(fresh, model, "data")}


def full_state_dict_phase(model, folder):
    """The gathered state dict through save_pretrained / from_pretrained on rank 0, checked tensor by tensor."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    pixel_values, _ = global_batch(6)
    model.eval()
    with torch.no_grad():
        sharded_logits = model(pixel_values=local_part(pixel_values)).logits
    model.train()
    result = None
    if dist.get_rank() == 0:
        unsharded = build(seed=2)
        unsharded.load_state_dict(state)  # strict: the keys are the unsharded model's
        unsharded.save_pretrained(folder)
        reloaded = VideoMambaForVideoClassification.from_pretrained(folder).eval()
        reloaded_state = reloaded.state_dict()
        mismatched = [name for name, tensor in state.items() if not torch.equal(reloaded_state[name], tensor)]
        with torch.no_grad():
            logits = reloaded(pixel_values=local_part(pixel_values)).logits
        result = {
            "keys_match": sorted(state) == sorted(reloaded_state),
            "mismatched": mismatched,
            "dtypes": sorted({str(tensor.dtype) for tensor in state.values()}),
            "logits_relative": relative_error(logits, sharded_logits),
        }
    dist.barrier()
    return result


def main(output_root):
    output_root = Path(output_root)
    dist.init_process_group("gloo")
    results = {"world_size": dist.get_world_size(), "native_scan_available": native_scan_available()}
    results["fp32_fast"], trained, optimizer = equal_training({"scan_implementation": "fast"})
    if results["native_scan_available"]:
        results["fp32_native_checkpointing"], _, _ = equal_training(
            {"scan_implementation": "native"}, checkpointing=True, steps=1, reshard_after_forward=False
        )
    results["bf16_policy"] = mixed_precision_training()
    results["bf16_weights_fp32_ssm"] = half_model_phase()
    results["all_gathers_per_step"] = all_gathers_phase()
    results["distributed_checkpoint"] = distributed_checkpoint_phase(trained, optimizer, output_root / "dcp")
    results["full_state_dict"] = full_state_dict_phase(trained, output_root / "pretrained")
    try:
        shard_model(trained)
        results["sharding_twice_error"] = None
    except ValueError as error:
        results["sharding_twice_error"] = str(error)
    if dist.get_rank() == 0:
        (output_root / "results.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
