"""CYBORGS: Contrastively Bootstrapping Object Representations by Grounding in Segmentation.

A detectron2-native implementation of the ECCV 2022 method: a mask-contrastive pretrainer
(meta-architecture ``CYBORGS``), bootstrapped masks from the online encoder, the vMF
clustering-consistency curriculum, and the paper's transfer protocols.

Importing ``cyborgs`` registers everything the suite adds to detectron2, once, here: the
``CYBORGS`` meta-architecture (META_ARCH_REGISTRY), the transfer heads and backbones
(ROI_HEADS_REGISTRY, SEM_SEG_HEADS_REGISTRY, BACKBONE_REGISTRY), the data sets and their demo
twins (DatasetCatalog / MetadataCatalog), every mask source (MASK_SOURCE_REGISTRY), the k-means
backends (KMEANS_BACKEND_REGISTRY) and the vMF distances (VMF_DISTANCE_REGISTRY).
"""

__version__ = "0.1.0"

import warnings

# detectron2.layers imports fvcore.nn, which scripts a loss with torch.jit.script at import;
# torch deprecates that with a FutureWarning per call that no user can act on (two warnings on
# the console of every tool that imports us first, e.g. tools/make_demo_data.py in `make demo`).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    # registration (each module registers its entries when imported)
    from cyborgs import clustering, masks, modeling, transfer  # noqa: E402
    from cyborgs.data import datasets  # noqa: E402

__all__ = ["clustering", "masks", "modeling", "transfer", "datasets", "__version__"]
