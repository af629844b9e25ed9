"""Configuration of VideoMamba models (arXiv 2403.06977)."""

import math
import shutil
from pathlib import Path

from transformers import PreTrainedConfig

# The paper's sizes. Every preset shares patch 16, tubelet 1, state 16, conv 4, expand 2 and RMSNorm.
PRESETS = {
    "tiny": {"hidden_size": 192, "num_hidden_layers": 24},
    "small": {"hidden_size": 384, "num_hidden_layers": 24},
    "middle": {"hidden_size": 576, "num_hidden_layers": 32},
    # Image-only in the paper (dropped for video); kept so its ImageNet checkpoint converts.
    "base": {"hidden_size": 768, "num_hidden_layers": 24},
}

SCAN_IMPLEMENTATIONS = ("auto", "reference", "fast", "native", "cuda", "triton", "export")
TOKEN_ORDERS = ("spatial_first", "temporal_first", "hybrid")
DT_INITS = ("original", "mamba")
MODALITIES = ("video", "image")

# Written into every saved config so that any of these Auto classes loads a saved directory with
# `trust_remote_code=True`, whichever head was saved (the files named here are copied beside the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_videomamba.VideoMambaConfig",
    "AutoModel": "modeling_videomamba.VideoMambaModel",
    "AutoModelForVideoClassification": "modeling_videomamba.VideoMambaForVideoClassification",
    "AutoModelForImageClassification": "modeling_videomamba.VideoMambaForImageClassification",
    "AutoModelForPreTraining": "modeling_videomamba_pretraining.VideoMambaForPreTraining",
}
ALIGNED_FEATURE_SOURCES = ("original", "final_norm")


def copy_auto_map_modules(auto_map: dict, folder) -> list:
    """Copies into `folder` each module of this package that `auto_map` names, with the modules it imports
    relatively, where `folder` lacks them; returns the paths written. Names of modules not in this package
    (a user's own entries, or a copy loaded with trust_remote_code that lacks one) are left alone."""
    from transformers.dynamic_module_utils import get_relative_import_files

    package = Path(__file__).resolve().parent
    written = []
    for reference in auto_map.values():
        if not isinstance(reference, str):
            continue
        source = package / f"{reference.split('.')[0]}.py"
        if not source.is_file():
            continue
        for path in [source, *get_relative_import_files(source)]:
            target = Path(folder) / Path(path).name
            if not target.exists():
                shutil.copy(path, target)
                written.append(target)
    return written


# What the CUDA kernels accept (causal-conv1d's csrc/causal_conv1d.cpp, mamba-ssm's
# csrc/selective_scan/selective_scan.cpp): scan_implementation="cuda" is checked against these.
CUDA_CONV_WIDTHS = (2, 3, 4)
CUDA_MAX_STATE_SIZE = 256


def cuda_kernel_limits_problem(state_size=None, conv_kernel=None) -> str:
    """What in these sizes mamba-ssm's / causal-conv1d's kernels do not support ("" when they do;
    a size not given is not checked)."""
    problems = []
    if conv_kernel is not None and conv_kernel not in CUDA_CONV_WIDTHS:
        problems.append(f"causal-conv1d supports conv widths {CUDA_CONV_WIDTHS}, got conv_kernel={conv_kernel}")
    if state_size is not None and state_size > CUDA_MAX_STATE_SIZE:
        problems.append(f"mamba-ssm's scan supports state sizes <= {CUDA_MAX_STATE_SIZE}, got state_size={state_size}")
    return "; ".join(problems)


class VideoMambaConfig(PreTrainedConfig):
    r"""
    Configuration of a VideoMamba backbone and its heads.

    Args:
        image_size (`int`, *optional*, defaults to 224): Height and width of the input frames.
        patch_size (`int`, *optional*, defaults to 16): Spatial side of a patch.
        num_channels (`int`, *optional*, defaults to 3): Channels of the input frames.
        num_frames (`int`, *optional*, defaults to 8): Frames of the input clip.
        tubelet_size (`int`, *optional*, defaults to 1): Frames folded into one patch (temporal patch size).
        hidden_size (`int`, *optional*, defaults to 192): Width D of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 24): Number of bidirectional Mamba blocks.
        state_size (`int`, *optional*, defaults to 16): SSM state size N.
        conv_kernel (`int`, *optional*, defaults to 4): Width of the causal depthwise convolution.
        expand (`int`, *optional*, defaults to 2): Inner width of a mixer is `expand * hidden_size`.
        time_step_rank (`int` or `"auto"`, *optional*, defaults to `"auto"`): Rank R of the step-size
            projection; `"auto"` is `ceil(hidden_size / 16)`.
        layer_norm_epsilon (`float`, *optional*, defaults to 1e-5): Epsilon of every norm.
        rms_norm (`bool`, *optional*, defaults to `True`): RMSNorm (weight only) if true, else LayerNorm.
        residual_in_fp32 (`bool`, *optional*, defaults to `True`): Keep the residual stream in float32
            whatever the compute dtype.
        drop_path_rate (`float`, *optional*, defaults to 0.0): Stochastic depth; block `i` drops its mixer
            output with rate `drop_path_rate * i / (num_hidden_layers - 1)`.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0): Dropout on the embeddings.
        classifier_dropout (`float`, *optional*, defaults to 0.0): Dropout before a classification head.
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the truncated-normal init.
        dt_init (`str`, *optional*, defaults to `"mamba"`): Initialisation of the mixers' fresh weights (loaded
            weights are never touched, so converted checkpoints compute the same either way). `"mamba"`
            (Mamba's own init: fan-in uniform `in_proj` / `x_proj`, step sizes log-uniform in
            [`time_step_min`, `time_step_max`] through an inverse-softplus bias) learns from scratch;
            `"original"` is VideoMamba's (every Linear truncated-normal with std `initializer_range`, zero
            step-size bias, so every step size is softplus(0) = 0.69 and the cls token, first in the scan,
            starts out seeing only the first few patches of the first frame).
        time_step_min, time_step_max (`float`): Range of initial step sizes for `dt_init="mamba"`.
        scan_implementation (`str`, *optional*, defaults to `"auto"`): Selective scan used by the mixers:
            `"reference"` (the plain sequential recurrence), `"fast"` (exact blocked pure-PyTorch scan),
            `"native"` (compiled C++ CPU kernel, built on first use; `"fast"` if it cannot be built),
            `"cuda"` (mamba-ssm kernels; `conv_kernel` 2 to 4 and `state_size` <= 256), `"triton"` (Triton
            kernels for CUDA tensors, no extension to build), `"export"` (ordinary ops for torch.export and
            ONNX; slow eagerly) or `"auto"` (for CUDA tensors the mamba-ssm kernels when installed and the
            sizes fit them, else Triton's when installed; on CPU the native kernel when it builds and
            `VIDEOMAMBA_NATIVE_SCAN` is not `0`; else the fast scan).
        token_order (`str`, *optional*, defaults to `"spatial_first"`): Order in which the mixers scan
            the patch tokens: `"spatial_first"` (frame by frame, the paper's choice), `"temporal_first"`
            (position by position through time) or `"hybrid"` (alternating per block). Outputs are
            always returned in spatial-first order.
        use_mean_pooling (`bool`, *optional*, defaults to `False`): What `pooler_output` (and so a classification
            head) reads: `False` the normalised cls token (the original's head, which converted checkpoints
            use), `True` the mean of the normalised patch tokens (VideoMAE's `use_mean_pooling`).
        modality (`str`, *optional*, defaults to `"video"`): `"video"` (Conv3d patches, temporal embeddings,
            input (B, T, C, H, W)) or `"image"` (Conv2d patches, no temporal embedding, input (B, C, H, W));
            `VideoMambaForImageClassification` sets it to `"image"`.
        teacher_hidden_size (`int`, *optional*, defaults to 512): Width of the teacher features that
            `VideoMambaForPreTraining` aligns to (the original's `clip_output_dim`).
        num_aligned_layers (`int`, *optional*, defaults to 1): Number K of final blocks whose outputs
            `VideoMambaForPreTraining` aligns, each through its own decoder.
        aligned_layer_interval (`int`, *optional*, defaults to 1): Spacing of the aligned blocks: blocks
            `num_hidden_layers - 1 - k * aligned_layer_interval` for `k < num_aligned_layers`.
        aligned_feature_source (`str`, *optional*, defaults to `"original"`): `"original"` reproduces the
            original's choice (the final norm of each aligned block's output, except that the last block
            is replaced by the RAW stream entering it, so converted pretraining checkpoints match);
            `"final_norm"` aligns the final-norm output of every aligned block, the last one included.
    """

    model_type = "videomamba"

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        num_channels=3,
        num_frames=8,
        tubelet_size=1,
        hidden_size=192,
        num_hidden_layers=24,
        state_size=16,
        conv_kernel=4,
        expand=2,
        time_step_rank="auto",
        layer_norm_epsilon=1e-5,
        rms_norm=True,
        residual_in_fp32=True,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        classifier_dropout=0.0,
        initializer_range=0.02,
        dt_init="mamba",
        time_step_min=0.001,
        time_step_max=0.1,
        scan_implementation="auto",
        token_order="spatial_first",
        use_mean_pooling=False,
        modality="video",
        teacher_hidden_size=512,
        num_aligned_layers=1,
        aligned_layer_interval=1,
        aligned_feature_source="original",
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.state_size = state_size
        self.conv_kernel = conv_kernel
        self.expand = expand
        self.time_step_rank = math.ceil(hidden_size / 16) if time_step_rank == "auto" else time_step_rank
        self.layer_norm_epsilon = layer_norm_epsilon
        self.rms_norm = rms_norm
        self.residual_in_fp32 = residual_in_fp32
        self.drop_path_rate = drop_path_rate
        self.hidden_dropout_prob = hidden_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        self.dt_init = dt_init
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.scan_implementation = scan_implementation
        self.token_order = token_order
        self.use_mean_pooling = use_mean_pooling
        self.modality = modality
        self.teacher_hidden_size = teacher_hidden_size
        self.num_aligned_layers = num_aligned_layers
        self.aligned_layer_interval = aligned_layer_interval
        self.aligned_feature_source = aligned_feature_source
        super().__init__(**kwargs)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self._validate()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves config.json and, beside it, the module files of every head `auto_map` names.

        transformers copies only the saved class's module and its imports, so a classifier's directory would
        lack `modeling_videomamba_pretraining.py` and fail as `AutoModelForPreTraining` with `trust_remote_code`.
        (A model's `save_pretrained` saves its config through here before any upload.)
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        copy_auto_map_modules(self.auto_map, save_directory)

    @property
    def intermediate_size(self) -> int:
        """Inner width of a mixer, `expand * hidden_size`."""
        return self.expand * self.hidden_size

    @property
    def grid_size(self) -> tuple:
        """(frames, rows, columns) of patches for the configured input size."""
        side = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VideoMambaConfig":
        """A config of one of the paper's sizes (`"tiny"`, `"small"`, `"middle"`, `"base"`), with overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown VideoMamba preset {name!r}; expected one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def _validate(self):
        positive = (
            "image_size", "patch_size", "num_channels", "num_frames", "tubelet_size", "hidden_size",
            "num_hidden_layers", "state_size", "conv_kernel", "expand", "time_step_rank",
            "teacher_hidden_size", "num_aligned_layers", "aligned_layer_interval",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"VideoMambaConfig.{name} must be a positive integer, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})."
            )
        if self.num_frames % self.tubelet_size:
            raise ValueError(
                f"num_frames ({self.num_frames}) must be divisible by tubelet_size ({self.tubelet_size})."
            )
        if not isinstance(self.use_mean_pooling, bool):
            raise ValueError(f"VideoMambaConfig.use_mean_pooling must be True or False, got {self.use_mean_pooling!r}.")
        for name in ("drop_path_rate", "hidden_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"VideoMambaConfig.{name} must lie in [0, 1), got {value!r}.")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}.")
        for name, allowed in (
            ("scan_implementation", SCAN_IMPLEMENTATIONS),
            ("token_order", TOKEN_ORDERS),
            ("dt_init", DT_INITS),
            ("modality", MODALITIES),
            ("aligned_feature_source", ALIGNED_FEATURE_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"VideoMambaConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        limits = cuda_kernel_limits_problem(self.state_size, self.conv_kernel)
        if self.scan_implementation == "cuda" and limits:
            raise ValueError(
                f"VideoMambaConfig: scan_implementation='cuda' cannot run this model: {limits}. Use "
                "scan_implementation='auto' (it falls back to 'triton' or 'fast' on GPUs) or supported sizes."
            )
        if (self.num_aligned_layers - 1) * self.aligned_layer_interval >= self.num_hidden_layers:
            raise ValueError(
                f"num_aligned_layers ({self.num_aligned_layers}) with interval {self.aligned_layer_interval} "
                f"reaches below block 0 of {self.num_hidden_layers}."
            )


__all__ = ["VideoMambaConfig"]
