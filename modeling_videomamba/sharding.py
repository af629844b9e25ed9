"""Sharded data parallel training with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

`shard_model` gives every `VideoMambaLayer` its own FSDP group (its parameters are gathered just before the
block runs and freed after it, in forward and again in backward), then shards the rest (embeddings, final
norm, heads) as the root group. Needs an initialised process group (torchrun: NCCL on GPUs, gloo on CPU).

Two details the model needs, both handled here:

- The SSM parameters A_log, A_b_log, D, D_b (`_keep_in_fp32_modules_strict`) stay float32: FSDP2 casts a
  whole group to `MixedPrecisionPolicy.param_dtype`, and a group must have one original dtype (a model
  loaded with `dtype=torch.bfloat16` holds bf16 weights next to fp32 A/D, which one group per block
  refuses). Whenever they would be cast, or differ in dtype from the rest of their block, they get a small
  group of their own on the mixer that does no casting.
- Blocks do not cast their inputs (`cast_forward_inputs=False`): the residual stream between blocks stays
  float32 (`config.residual_in_fp32`), and each block casts what it computes to its weights' dtype itself.
  The root group does cast, so `pixel_values` reach the patch embedding in the compute dtype.
"""

import dataclasses

from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

# The blocks that get their own group: the same class the Trainer's `transformer_layer_cls_to_wrap` names.
LAYER_CLASS_NAMES = ("VideoMambaLayer",)


def _is_layer(module: nn.Module) -> bool:
    """A VideoMambaLayer or a subclass (matched by name: the block's module may move within the package)."""
    return any(cls.__name__ in LAYER_CLASS_NAMES for cls in type(module).__mro__)


def _fp32_parameter_names(model: nn.Module) -> set:
    return set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())


def _kept_fp32(layer: nn.Module, names: set) -> dict:
    """{parameter: the module that owns it} for the layer's parameters named in `names`."""
    kept = {}
    for module in layer.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name in names:
                kept[parameter] = module
    return kept


def _needs_own_group(kept: dict, others: list, param_dtype) -> bool:
    """True when FSDP would cast the fp32 parameters, or they differ in dtype from the rest of the block."""
    if not kept:
        return False
    compute_dtypes = {param_dtype} if param_dtype is not None else {p.dtype for p in others}
    return any({p.dtype} != compute_dtypes for p in kept)


def shard_model(
    model: nn.Module,
    mp_policy: MixedPrecisionPolicy = None,
    reshard_after_forward: bool = True,
    mesh=None,
) -> nn.Module:
    """Apply FSDP2 in place: one group per `VideoMambaLayer` (A/D in fp32, see the module docstring), then the root.

    Args:
        model: a model built of `VideoMambaLayer` blocks (the backbone, the classifiers, the pretraining
            model; tests/test_sharding.py trains `VideoMambaForVideoClassification`), on the device it will
            train on, with the same initial weights on every rank (same seed, or the same checkpoint).
        mp_policy: FSDP2's mixed precision, e.g. `MixedPrecisionPolicy(param_dtype=torch.bfloat16,
            reduce_dtype=torch.float32)`; None computes in the parameters' dtype. The sharded parameters the
            optimizer updates keep their original dtype.
        reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3 memory, a
            second all-gather in backward); False keeps them until the backward (ZeRO-2-like).
        mesh: the `DeviceMesh` to shard over (passed to every `fully_shard`; only the default is tested here);
            None uses all ranks of the default process group.

    Returns the model, now an `FSDPModule`. Gradients are averaged over ranks, as DDP does.
    """
    if isinstance(model, FSDPModule):
        raise ValueError(f"{type(model).__name__} is already sharded; call shard_model once, on the unsharded model.")
    layers = [module for module in model.modules() if _is_layer(module)]
    if not layers:
        raise ValueError(
            f"shard_model expected a VideoMamba model with {' or '.join(LAYER_CLASS_NAMES)} blocks; "
            f"{type(model).__name__} has none."
        )
    mp_policy = mp_policy if mp_policy is not None else MixedPrecisionPolicy()
    layer_policy = dataclasses.replace(mp_policy, cast_forward_inputs=False)
    # No param_dtype: A and D are gathered and used as they are; reduced in their own dtype (fp32).
    fp32_policy = MixedPrecisionPolicy(cast_forward_inputs=False)
    names = _fp32_parameter_names(model)
    for layer in layers:
        kept = _kept_fp32(layer, names)
        others = [p for p in layer.parameters() if p not in kept]
        if not _needs_own_group(kept, others, mp_policy.param_dtype):
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=layer_policy)
            continue
        # The block first, leaving A/D out; then each owner of A/D (the mixer) gets a group holding only them
        # (its other parameters are already in the block's group). Bottom-up order would not work: a group
        # does not look inside a module that has one, so the block would miss the mixer's Linear layers.
        fully_shard(
            layer,
            mesh=mesh,
            reshard_after_forward=reshard_after_forward,
            mp_policy=layer_policy,
            ignored_params=set(kept),
        )
        for owner in dict.fromkeys(kept.values()):
            own = {p for p, module in kept.items() if module is owner}
            fully_shard(
                owner,
                mesh=mesh,
                reshard_after_forward=reshard_after_forward,
                mp_policy=fp32_policy,
                ignored_params=set(owner.parameters()) - own,
            )
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    return model

