"""The BYOL augmentation recipe's numbers, read from what the default config's views draw and
what the ops then do to known images, on the CPU path and the device path.

The paper's pipelines T, T' are BYOL's (Grill et al. 2020, appendix B, Table 6): random resized
crop to 224 with area scale [0.08, 1] and aspect ratio [3/4, 4/3]; horizontal flip p = 0.5;
colour jitter p = 0.8 with brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, the four
shifts "performed in a randomly selected order for each patch" (torchvision's ColorJitter:
factors U[1 - s, 1 + s] for brightness / contrast / saturation, a hue rotation U[-h, h] of a
turn); grayscale p = 0.2; Gaussian blur with a 23 x 23 kernel (10% of 224) and
sigma ~ U[0.1, 2.0], p = 1.0 / 0.1 for views 1 / 2; solarize x -> 1 - x where x >= 0.5 (128 of
uint8), p = 0 / 0.2. (BYOL's TensorFlow code shifts brightness additively by up to 0.4;
the suite uses torchvision's multiplicative factor, as PyTorch ports do, and pins that.)
The probabilities are tested in test_device_augment.py; here: the
magnitudes, measured from the ops' effect rather than read from constants.
"""

import colorsys
import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from detectron2.config import get_cfg

from cyborgs.config import add_cyborgs_config
from cyborgs.data import device_augment as DA
from cyborgs.pretrain_data.augment import TwoViewAugment, ViewAugment

N_DRAWS = 1500
# torchvision's per-image ops are slow: the CPU path is measured on the first draws only
N_APPLY = {"cpu": 300, "device": N_DRAWS}


def _default_aug(device: str) -> TwoViewAugment:
    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.CYBORGS.AUG.DEVICE = device
    return TwoViewAugment.from_config(cfg)


def _records(view_index: int = 0, n: int = N_DRAWS, seed: int = 0) -> list[dict]:
    """Photometric parameters drawn by the default config's view (both paths draw with it)."""
    view = _default_aug("off").views[view_index]
    rng = np.random.default_rng(seed)
    return [view.draw_photometric(rng) for _ in range(n)]


def _apply(path: str, images: torch.Tensor, records: list[dict]) -> torch.Tensor:
    """uint8 [B,3,H,W] through one path's photometric chain -> float [B,3,H,W]."""
    if path == "cpu":
        return torch.stack(
            [ViewAugment.apply_photometric(im, r) for im, r in zip(images, records, strict=True)]
        ).float()
    return DA.apply_photometric(images, DA.stack_photometric(records, "cpu"))


def _only(record: dict, **keep) -> dict:
    """The record with every op off except those given (jitter ops at identity factors)."""
    out = dict(record, jitter=False, grayscale=False, blur_sigma=0.0, solarize=False)
    out["factors"] = [1.0, 1.0, 1.0, 0.0]
    out.update(keep)
    return out


def test_default_geometry_is_byols_crop_and_flip():
    aug = _default_aug("on")
    view = aug.views[0]
    rng = np.random.default_rng(0)
    H, W = 360, 360  # square: rejected draws (too big a side) are symmetric in the ratio
    fracs, ratios, flips = [], [], []
    for _ in range(N_DRAWS):
        (x0, y0, x1, y1), flip = view.geometry(H, W, rng)
        fracs.append((x1 - x0) * (y1 - y0) / (H * W))
        ratios.append((x1 - x0) / (y1 - y0))
        flips.append(flip)
    fracs, ratios = np.array(fracs), np.array(ratios)
    # area in [0.08, 1] of the image (integer rounding of the sides: a little slack)
    assert fracs.min() >= 0.075 and fracs.max() <= 1.0
    assert fracs.min() < 0.09 and fracs.max() > 0.9
    # aspect ratio log-uniform in [3/4, 4/3]: both ends reached, nothing beyond
    assert ratios.min() >= 0.74 and ratios.max() <= 1.35
    assert ratios.min() < 0.77 and ratios.max() > 1.30
    assert abs(np.mean(np.log(ratios))) < 0.02  # log-uniform is symmetric around 1
    assert abs(np.mean(flips) - 0.5) < 4 * np.sqrt(0.25 / N_DRAWS)
    img = np.zeros((H, W, 3), np.uint8)
    v = aug(img, np.zeros((H, W), np.uint8), rng)
    assert v[0]["image"].shape == (3, 224, 224) and v[1]["mask"].shape == (224, 224)


def _measure_jitter(path: str, records: list[dict], op: int) -> np.ndarray:
    """Apply only jitter op ``op`` with each record's drawn value to a known image and read
    the value back from the result (so the op's meaning is checked along with the range):

    - brightness: a grey 100 image becomes trunc(100 f): f = out / 100;
    - contrast: a grey image half 50 / half 150 is blended with its mean grey level, so the
      difference of the halves becomes 100 c: c = diff / 100;
    - saturation: (180, 120, 60) is blended with its own grey level: s = (R - B) / 120;
    - hue: the hue of (200, 80, 40) (a fraction of a turn) is rotated by h: h = hue(out) -
      hue(in), wrapped into [-0.5, 0.5).
    """
    B, S = len(records), 8
    x = torch.zeros(B, 3, S, S, dtype=torch.uint8)
    if op == 0:
        x[:] = 100
    elif op == 1:
        x[..., : S // 2] = 50
        x[..., S // 2 :] = 150
    elif op == 2:
        x[:, 0], x[:, 1], x[:, 2] = 180, 120, 60
    else:
        x[:, 0], x[:, 1], x[:, 2] = 200, 80, 40
    recs = []
    for r in records:
        factors = [1.0, 1.0, 1.0, 0.0]
        factors[op] = r["factors"][op]
        order = [op] + [i for i in range(4) if i != op]
        recs.append(_only(r, jitter=True, order=order, factors=factors))
    out = _apply(path, x, recs).numpy()
    if op == 0:
        return out[:, 0, 0, 0] / 100.0
    if op == 1:
        return (out[:, 0, 0, -1] - out[:, 0, 0, 0]) / 100.0
    if op == 2:
        return (out[:, 0, 0, 0] - out[:, 2, 0, 0]) / 120.0
    h_in = colorsys.rgb_to_hsv(200 / 255, 80 / 255, 40 / 255)[0]
    h_out = np.array([colorsys.rgb_to_hsv(*(out[b, :, 0, 0] / 255.0))[0] for b in range(B)])
    return (h_out - h_in + 0.5) % 1.0 - 0.5


@pytest.mark.parametrize("path", ["cpu", "device"])
def test_colour_jitter_strengths_are_byols(path):
    records = [r for r in _records()[: N_APPLY[path]] if r["jitter"]]
    # op: (name, lowest, highest value of BYOL's recipe, tolerance of the measurement)
    recipe = {
        0: ("brightness", 0.6, 1.4, 0.011),
        1: ("contrast", 0.6, 1.4, 0.021),
        2: ("saturation", 0.8, 1.2, 0.017),
        3: ("hue", -0.1, 0.1, 0.004),
    }
    for op, (name, lo, hi, tol) in recipe.items():
        measured = _measure_jitter(path, records, op)
        drawn = np.array([r["factors"][op] for r in records])
        # the op does what its drawn value means ...
        assert np.abs(measured - drawn).max() <= tol, name
        # ... and the values cover BYOL's range, uniformly, and nothing outside it
        assert measured.min() >= lo - tol and measured.max() <= hi + tol, name
        width = hi - lo
        assert measured.min() < lo + 0.03 * width and measured.max() > hi - 0.03 * width, name
        quarters = np.histogram(drawn, bins=4, range=(lo, hi))[0] / len(drawn)
        assert np.abs(quarters - 0.25).max() < 4 * np.sqrt(0.25 * 0.75 / len(drawn)), name


def test_jitter_order_is_a_fresh_uniform_permutation_applied_as_drawn():
    """BYOL: the order of the four shifts is drawn per patch; every permutation occurs about
    equally often, and the CPU chain applies the ops in the drawn order (the device chain is
    compared with the CPU chain in test_device_augment.py)."""
    records = _records()
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for r in records:
        counts[tuple(r["order"])] += 1
    expected = len(records) / 24
    assert all(abs(c - expected) < 4 * np.sqrt(expected) for c in counts.values()), counts
    # an image on which the order matters: brightness 1.4 then contrast 0.6 != the reverse
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    tv = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = [1.4, 0.6, 1.2, 0.1]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        rec = _only(records[0], jitter=True, order=order, factors=factors)
        ref = x
        for i in order:
            ref = tv[i](ref, factors[i])
        assert torch.equal(ViewAugment.apply_photometric(x, rec), ref), order
    a = ViewAugment.apply_photometric(x, _only(records[0], jitter=True, order=[0, 1, 2, 3]))
    b = ViewAugment.apply_photometric(x, _only(records[0], jitter=True, order=[3, 2, 1, 0]))
    assert torch.equal(a, b)  # identity factors: order irrelevant
    rec1 = _only(records[0], jitter=True, order=[0, 1, 2, 3], factors=factors)
    rec2 = _only(records[0], jitter=True, order=[1, 0, 2, 3], factors=factors)
    assert not torch.equal(
        ViewAugment.apply_photometric(x, rec1), ViewAugment.apply_photometric(x, rec2)
    )


def _edge_profile(path: str, records: list[dict], size: int = 64) -> np.ndarray:
    """A vertical step edge (0 | 255) blurred with each record's kernel and sigma; returns
    the spread (standard deviation, px) of the blurred edge's derivative: the blur's sigma."""
    x = torch.zeros(len(records), 3, size, size, dtype=torch.uint8)
    x[..., size // 2 :] = 255
    recs = [_only(r, blur_sigma=r["blur_sigma"]) for r in records]
    row = _apply(path, x, recs)[:, 0, size // 2].numpy()
    d = np.diff(row, axis=1)
    pos = np.arange(d.shape[1])
    mean = (d * pos).sum(1) / d.sum(1)
    return np.sqrt((d * (pos - mean[:, None]) ** 2).sum(1) / d.sum(1))


@pytest.mark.parametrize("path", ["cpu", "device"])
def test_blur_kernel_and_sigma_range_are_byols(path):
    view1 = _records(view_index=0, n=400, seed=1)
    view2 = _records(view_index=1, n=N_DRAWS, seed=2)
    # kernel: 23 px at 224 = 10% of the side, odd
    assert {r["blur_kernel"] for r in view1 + view2} == {23}
    sigma = np.array([r["blur_sigma"] for r in view1])
    assert (sigma > 0).all()  # view 1 always blurs
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert sigma.min() < 0.12 and sigma.max() > 1.98
    blurred2 = np.array([r["blur_sigma"] for r in view2 if r["blur_sigma"] > 0])
    assert blurred2.min() >= 0.1 and blurred2.max() <= 2.0 and len(blurred2) > 80
    # the blur the ops apply: the edge's measured spread follows the drawn sigma (a sampled
    # Gaussian's spread is sigma for sigma >~ 0.8 and shrinks towards 0 below)
    n = N_APPLY[path] // 4
    spread, sigma = _edge_profile(path, view1[:n]), sigma[:n]
    big = sigma >= 0.8
    assert np.abs(spread[big] - sigma[big]).max() < 0.1
    assert spread.max() > 1.85 and spread.max() < 2.1
    assert spread[sigma < 0.3].max() < 0.3 and spread.min() < 0.05
    # the kernel's width: with a huge sigma the 23-tap kernel is flat, so the edge becomes a
    # linear ramp: 0 -> 255 in 23 steps of 255 / 23, one per tap
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    x[..., 32:] = 255
    row = _apply(path, x, [_only(view1[0], blur_sigma=1000.0)])[0, 0, 32].numpy()
    assert np.count_nonzero(np.diff(row)) == 23


@pytest.mark.parametrize("path", ["cpu", "device"])
def test_solarize_threshold_is_half_the_range(path):
    """BYOL: x -> 1 - x where x >= 0.5; on uint8, 128 (= 0.502) flips and 127 (= 0.498) stays."""
    ramp = torch.arange(256, dtype=torch.uint8).view(16, 16).expand(3, 16, 16)
    rec = _only(_records(view_index=1, n=1)[0], solarize=True)
    out = _apply(path, ramp[None].contiguous(), [rec])[0, 0].flatten()
    v = torch.arange(256, dtype=torch.float32)
    assert torch.equal(out, torch.where(v >= 128, 255 - v, v))
