"""``import cyborgs`` alone registers every name the suite adds to detectron2 (one place)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json
import sys
import cyborgs  # the only cyborgs import
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
# Our registries are read from the modules ``import cyborgs`` loaded (importing them here would
# register their entries and hide a missing import).
MASK_SOURCE_REGISTRY = sys.modules["cyborgs.masks.registry"].MASK_SOURCE_REGISTRY
KMEANS_BACKEND_REGISTRY = sys.modules["cyborgs.clustering.kmeans"].KMEANS_BACKEND_REGISTRY
VMF_DISTANCE_REGISTRY = sys.modules["cyborgs.modeling.losses.vmf_clustering"].VMF_DISTANCE_REGISTRY
print(json.dumps({
    "meta_arch": sorted(k for k, _ in META_ARCH_REGISTRY),
    "roi_heads": sorted(k for k, _ in ROI_HEADS_REGISTRY),
    "sem_seg_heads": sorted(k for k, _ in SEM_SEG_HEADS_REGISTRY),
    "backbones": sorted(k for k, _ in BACKBONE_REGISTRY),
    "mask_sources": sorted(k for k, _ in MASK_SOURCE_REGISTRY),
    "kmeans_backends": sorted(k for k, _ in KMEANS_BACKEND_REGISTRY),
    "vmf_distances": sorted(k for k, _ in VMF_DISTANCE_REGISTRY),
    "datasets": sorted(DatasetCatalog.list()),
    "optional_loaded": sorted(m for m in ("faiss", "pydensecrf", "skimage") if m in sys.modules),
}))
"""


def test_import_cyborgs_registers_everything() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert "CYBORGS" in got["meta_arch"]
    assert "Res5ROIHeadsExtraNorm" in got["roi_heads"]
    assert {"FCNHead", "LinearProbeHead"} <= set(got["sem_seg_heads"])
    assert {"build_dilated_resnet_backbone", "build_frozen_block_backbone"} <= set(got["backbones"])
    assert set(got["mask_sources"]) == {
        "whole", "grid", "felzenszwalb", "selective_search", "ground_truth", "bootstrap",
    }  # fmt: skip
    assert got["kmeans_backends"] == ["faiss", "torch"]
    assert got["vmf_distances"] == ["euclidean", "vmf"]
    # Registering imports no optional dependency of a source or backend (each imports its own
    # when it computes).
    assert got["optional_loaded"] == []
    for name in (
        "coco_2017_train_unlabeled",
        "demo_coco_2017_train_unlabeled",
        "demo_coco_2017_train",
        "demo_voc_2007_trainval",
        "demo_coco_stuff_10k_sem_seg_train",
        "coco_stuff_10k_sem_seg_train",
    ):
        assert name in got["datasets"], name
