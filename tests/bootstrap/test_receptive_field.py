"""measure_cell_grid: stride and receptive-field centre of a bootstrap map, on encoders whose
answer follows from their kernels (hand-computed), whatever their weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cyborgs.bootstrap.receptive_field import measure_cell_grid


class _Net(torch.nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layers = torch.nn.Sequential(*layers)
        self.calls = 0

    def extract_features(self, images, names):
        self.calls += 1
        return {n: self.layers(images.float() / 255.0) for n in names}


def test_hand_computed_centres():
    # 4x4 blocks (no padding): cell i covers pixels 4i..4i+3, centre 4i + 1.5
    assert measure_cell_grid(_Net(torch.nn.Conv2d(3, 4, 4, stride=4)), ["x"]) == (4, (1.5, 1.5))
    # 2x4 kernel, stride 4: rows 4i..4i+1 (centre 4i + 0.5), columns 4i..4i+3 (4i + 1.5)
    net = _Net(torch.nn.Conv2d(3, 4, (2, 4), stride=4))
    assert measure_cell_grid(net, ["x"]) == (4, (0.5, 1.5))
    # the ResNet pattern: 3x3 stride-2 convolutions padded by 1 centre output i on input 2i
    convs = [torch.nn.Conv2d(3 if i == 0 else 4, 4, 3, stride=2, padding=1) for i in range(3)]
    assert measure_cell_grid(_Net(*convs), ["x"]) == (8, (0.0, 0.0))
    # 8x8 average pooling (the stand-in of the round tests): the old rule's centre, 8i + 3.5
    assert measure_cell_grid(_Net(torch.nn.AvgPool2d(8)), ["x"]) == (8, (3.5, 3.5))


def test_weights_do_not_matter_and_results_are_cached():
    a = _Net(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
             torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))  # fmt: skip
    b = _Net(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
             torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))  # fmt: skip
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(-3.0)  # other weights, half the ReLUs dead the other way round
    ga = measure_cell_grid(a, ["y"])
    assert ga == (4, (0.0, 0.0)) and measure_cell_grid(a, ["y"]) == ga and a.calls == 1
    assert measure_cell_grid(b, ["y"]) == ga  # same architecture: cached, not rerun
    assert b.calls == 0


def test_large_receptive_fields_grow_the_canvas():
    """A dilated 7x7 kernel reaches 48 px each way: past a 64-px canvas, so it is measured
    on a larger one rather than from a clipped support."""
    net = _Net(torch.nn.Conv2d(3, 4, 7, padding=48, dilation=16), torch.nn.AvgPool2d(2))
    assert measure_cell_grid(net, ["z"]) == (2, (0.5, 0.5))


def test_model_level_no_grad_is_bypassed():
    class NoGrad(_Net):
        @torch.no_grad()
        def extract_features(self, images, names):
            return {n: F.avg_pool2d(images.float(), 4) for n in names}

    assert measure_cell_grid(NoGrad(torch.nn.Identity()), ["w"]) == (4, (1.5, 1.5))
