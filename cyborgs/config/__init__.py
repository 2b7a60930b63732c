"""The pretraining config at the ground floor of the package: keys, vocabularies, checks.

* :mod:`.defaults`: :func:`add_cyborgs_config` (every ``CYBORGS.*`` / ``SOLVER.*`` key we add,
  commented), the shared vocabularies (switches, ``VMF.FEATURE``, image limits),
  :func:`mask_id_width` (derived, not a setting);
* :mod:`.checks`: :func:`validate_cyborgs_config`, one function per topic; :class:`ConfigError`;
  :func:`fall_back_to_cpu`;
* :mod:`.resnet`: detectron2's ResNet layout (blocks per stage, channels, strides, tap names);
* :mod:`.registries`: the registries config values choose from (filled by the packages above).

Imports nothing from the rest of ``cyborgs`` except :mod:`cyborgs.utils` (docs/DESIGN.md,
"Layers").
"""

from .checks import (
    ConfigError,
    canonical_switch,
    fall_back_to_cpu,
    validate_cyborgs_config,
)
from .defaults import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_IMAGE_PIXELS,
    DERIVED_KEYS,
    SWITCH_KEYS,
    SWITCH_VALUES,
    SYNC_NORMS,
    VMF_FEATURES,
    add_cyborgs_config,
    flat_items,
    get_key,
    mask_id_width,
    parse_switch,
    set_key,
)
from .resnet import RESNET_BLOCKS, parse_tap, res2_out_channels

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DERIVED_KEYS",
    "RESNET_BLOCKS",
    "SWITCH_KEYS",
    "SWITCH_VALUES",
    "SYNC_NORMS",
    "VMF_FEATURES",
    "ConfigError",
    "add_cyborgs_config",
    "canonical_switch",
    "fall_back_to_cpu",
    "flat_items",
    "get_key",
    "mask_id_width",
    "parse_switch",
    "parse_tap",
    "res2_out_channels",
    "set_key",
    "validate_cyborgs_config",
]
