"""Fixtures of the bootstrap tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from detectron2.config import get_cfg

from cyborgs.bootstrap.round import RoundSettings
from cyborgs.config import add_cyborgs_config


@pytest.fixture
def round_settings() -> Callable[..., RoundSettings]:
    """``round_settings(**overrides)``: the default config's round settings with images loaded
    in the test process (no loader workers) and ``overrides`` applied."""
    base = RoundSettings.from_cfg(add_cyborgs_config(get_cfg()))

    def make(**overrides) -> RoundSettings:
        return dataclasses.replace(base, **{"num_workers": 0, **overrides})

    return make
