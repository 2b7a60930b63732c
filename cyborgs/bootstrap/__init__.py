"""Stage 2 of CYBORGS (paper §3.3, METHOD.md §3): bootstrapping masks from the online encoder.

``features`` (fused, unit-norm bootstrap features), ``round`` (one round: joint k-means over
groups of images into a ``MaskStore``; ``RoundSettings.from_cfg``, ``run_bootstrap_round``), ``hook`` (``BootstrapHook``: schedule, distributed
protocol, resume), ``quality`` (Hungarian mIoU vs ground truth), ``crf`` (dense-CRF refinement).
"""

from .features import extract_bootstrap_features
from .quality import MaskQuality, ground_truth_quality, image_miou
from .round import RoundSettings, bootstrap_shard, round_manifest, run_bootstrap_round

__all__ = [
    "extract_bootstrap_features",
    "RoundSettings",
    "run_bootstrap_round",
    "bootstrap_shard",
    "round_manifest",
    "MaskQuality",
    "ground_truth_quality",
    "image_miou",
]


def __getattr__(name):  # the hook imports detectron2's engine: load it only when asked for
    if name == "BootstrapHook":
        from .hook import BootstrapHook

        return BootstrapHook
    raise AttributeError(name)
