"""CYBORGS: Contrastively Bootstrapping Object Representations by Grounding in Segmentation.

A detectron2-native implementation of the ECCV 2022 method: a mask-contrastive pretrainer
(meta-architecture ``CYBORGS``), bootstrapped masks from the online encoder, the vMF
clustering-consistency curriculum, and the paper's transfer protocols.
"""

__version__ = "0.1.0"
