"""The accelerator-path switches: parsing, "auto" resolution, the bf16 autocast region."""

import pytest
import torch

from cyborgs.modeling.precision import (
    autocast,
    bf16_enabled,
    channels_last_enabled,
    parse_switch,
)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("auto", "auto"),
        ("on", "on"),
        ("off", "off"),
        (" ON ", "on"),
        (True, "on"),
        (False, "off"),
        (None, "auto"),  # the keys' typeless default (so YAML booleans merge) means "auto"
    ],
)
def test_parse_switch_accepts_the_three_values_and_yaml_booleans(value, expected):
    assert parse_switch(value, "CYBORGS.GPU.BF16") == expected


@pytest.mark.parametrize("value", ["yes", "", "bf16", 1])
def test_parse_switch_rejects_anything_else_naming_the_key(value):
    with pytest.raises(ValueError, match=r"CYBORGS\.GPU\.CHANNELS_LAST.*'auto', 'on', 'off'"):
        parse_switch(value, "CYBORGS.GPU.CHANNELS_LAST")


def test_auto_is_off_on_cpu_and_explicit_values_win():
    cpu = torch.device("cpu")
    assert not channels_last_enabled("auto", cpu) and not bf16_enabled("auto", cpu)
    assert channels_last_enabled("on", cpu) and bf16_enabled("on", "cpu")
    assert not channels_last_enabled("off", "cuda") and not bf16_enabled("off", "cuda:0")
    # channels_last "auto" follows the device type alone
    assert channels_last_enabled("auto", "cuda:1")


def test_bf16_auto_on_cuda_needs_native_bf16():
    expected = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    assert bf16_enabled("auto", "cuda") == expected


def test_autocast_region_on_cpu():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast(x.device, True):
        assert conv(x).dtype == torch.bfloat16
    with autocast(x.device, False):
        assert conv(x).dtype == torch.float32
    # "off" is an explicit fp32 region, even inside a caller's autocast
    with torch.autocast("cpu", dtype=torch.bfloat16), autocast(x.device, False):
        assert conv(x).dtype == torch.float32
    assert conv.weight.dtype == torch.float32
