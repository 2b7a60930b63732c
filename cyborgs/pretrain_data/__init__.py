"""The pretraining input: each image as two augmented views with their masks, and the loader.

Above :mod:`cyborgs.masks` (the mapper reads each image's masks from its mask source) and below
:mod:`cyborgs.modeling`; the data sets themselves and the image reader live in :mod:`cyborgs.data`.
"""
