"""CYBORGS checkpoint -> detectron2 / torchvision backbone weights (METHOD.md §6).

The pretrainer's checkpoint holds the whole meta-architecture; transfer needs only the ONLINE
ResNet (or, on request, the EMA target). It is already in detectron2 names (``stem.*``,
``res2..res5.*``) under a module prefix, so conversion is: select, strip the prefix, validate the
key set against a freshly built ResNet of the same depth, and write it in detectron2's model-zoo
``.pkl`` layout. The torchvision export renames to ``conv1/bn1/layer1..4``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping

import numpy as np
import torch

from cyborgs.config.resnet import RESNET_BLOCKS, res2_out_channels
from cyborgs.engine.weights_io import load_weights
from cyborgs.utils.atomic import atomic_write_bytes

# Prefixes of the online / target encoder inside the CYBORGS meta-architecture's state_dict.
# The first one found wins; ``module.`` (DDP) is stripped beforehand.
SOURCE_PREFIXES: dict[str, tuple[str, ...]] = {
    "online": ("backbone.", "online_backbone.", "encoder.", "online.backbone."),
    "target": ("target_backbone.", "target.backbone.", "target_encoder."),
}


def _is_buffer_counter(key: str) -> bool:
    # BN's step counter: meaningless for transfer and absent from FrozenBN / model-zoo weights.
    return key.endswith("num_batches_tracked")


def extract_backbone_state_dict(
    checkpoint: Mapping, source: str = "online", prefix: str | None = None, path: str = "<ckpt>"
) -> dict[str, torch.Tensor]:
    """Return the chosen encoder's weights with the module prefix removed (detectron2 names)."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a dict with a 'model' state_dict")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    if prefix is None:
        if source not in SOURCE_PREFIXES:
            raise ValueError(f"--source must be one of {sorted(SOURCE_PREFIXES)}, got {source!r}")
        found = [p for p in SOURCE_PREFIXES[source] if any(k.startswith(p) for k in state)]
        if not found:
            tops = sorted({k.split(".", 1)[0] for k in state})
            raise KeyError(
                f"{path}: no {source} backbone found (looked for prefixes "
                f"{SOURCE_PREFIXES[source]}; top-level modules are {tops}); pass --prefix"
            )
        prefix = found[0]
    out = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and torch.is_tensor(v) and not _is_buffer_counter(k)
    }
    if not out:
        raise KeyError(f"{path}: no tensors under prefix {prefix!r}")
    return out


def infer_depth(state: Mapping[str, torch.Tensor]) -> int:
    """ResNet depth from the key set (block counts per stage, bottleneck or basic blocks)."""
    counts = []
    for stage in range(2, 6):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"res{stage}\.(\d+)\.", k))}
        counts.append(len(ids))
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    for depth, blocks in RESNET_BLOCKS.items():
        if tuple(counts) == blocks and bottleneck == (depth >= 50):
            return depth
    raise ValueError(f"cannot infer the ResNet depth: blocks per stage {counts}")


def reference_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of detectron2's ResNet-``depth`` (BN), the ground truth for validation."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2_out_channels(depth)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not _is_buffer_counter(k)}


def validate_backbone(state: Mapping[str, torch.Tensor], depth: int, path: str = "<ckpt>") -> None:
    """Fail loudly unless ``state`` is exactly a detectron2 ResNet-``depth``'s weights."""
    ref = reference_resnet_shapes(depth)
    missing = sorted(set(ref) - set(state))
    unexpected = sorted(set(state) - set(ref))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {ref[k]}"
        for k in sorted(set(ref) & set(state))
        if tuple(state[k].shape) != ref[k]
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path}: not a detectron2 ResNet-{depth} backbone. missing={missing[:10]} "
            f"(+{max(0, len(missing) - 10)}), unexpected={unexpected[:10]} "
            f"(+{max(0, len(unexpected) - 10)}), wrong shapes={shapes[:10]}"
        )


# detectron2 -> torchvision names. Order matters: the block-level rules run after the stem ones.
_D2_TO_TV = [
    (r"^stem\.conv1\.norm\.", "bn1."),
    (r"^stem\.conv1\.", "conv1."),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
    (r"^res(\d)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}."),
]


def detectron2_to_torchvision_name(key: str) -> str:
    for pattern, repl in _D2_TO_TV:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"no torchvision name for detectron2 key {key!r}")


def to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet state_dict (no ``fc``); BN step counters added as torchvision has them."""
    out = {detectron2_to_torchvision_name(k): v.detach().clone() for k, v in state.items()}
    for k in list(out):
        if k.endswith(".running_var"):
            out[k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return out


def write_detectron2_pkl(state: Mapping[str, torch.Tensor], path: str) -> None:
    """detectron2 model-zoo layout; ``matching_heuristics`` lets C4/FPN prefixes be found.

    Protocol 4: readable by any Python 3 and without numpy's protocol-5 buffer path."""
    payload = {
        "model": {k: v.detach().cpu().numpy() for k, v in state.items()},
        "__author__": "CYBORGS",
        "matching_heuristics": True,
    }
    atomic_write_bytes(path, pickle.dumps(payload, protocol=4))


def write_torchvision_pth(state: Mapping[str, torch.Tensor], path: str) -> None:
    import io

    buf = io.BytesIO()
    torch.save(to_torchvision(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def convert_checkpoint(
    ckpt_path: str,
    out_path: str,
    source: str = "online",
    fmt: str = "detectron2",
    depth: int | None = None,
    prefix: str | None = None,
) -> dict[str, np.ndarray | torch.Tensor]:
    """Convert one checkpoint; returns the (detectron2-named) backbone weights written."""
    checkpoint = load_weights(ckpt_path, expect="pth", purpose="the converter")
    state = extract_backbone_state_dict(checkpoint, source=source, prefix=prefix, path=ckpt_path)
    inferred = infer_depth(state)
    if depth is not None and depth != inferred:
        raise ValueError(f"{ckpt_path}: --depth {depth} but the weights are a ResNet-{inferred}")
    validate_backbone(state, inferred, path=ckpt_path)
    if fmt == "detectron2":
        write_detectron2_pkl(state, out_path)
    elif fmt == "torchvision":
        write_torchvision_pth(state, out_path)
    else:
        raise ValueError(f"--format must be 'detectron2' or 'torchvision', got {fmt!r}")
    return state
