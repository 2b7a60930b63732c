"""BYOL two-view augmentation: shared geometry, recorded boxes/flips, image-only photometrics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from cyborgs.config import add_cyborgs_config
from cyborgs.pretrain_data.augment import (
    TwoViewAugment,
    ViewAugment,
    blur_kernel_size,
    sample_crop_box,
)

NO_PHOTO = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
ALL_PHOTO = dict(color_jitter_prob=1.0, grayscale_prob=1.0, blur_prob=1.0, solarize_prob=1.0)


def coord_image(h=120, w=160):
    """R = x, G = y (so pixel values encode coordinates), B = 0."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)


def block_scene(h=120, w=160, block=20, seed=0):
    """A blocky mask and an image whose colour is a function of the mask id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=(h // block + 1, w // block + 1))
    mask = np.kron(ids, np.ones((block, block), dtype=int))[:h, :w]
    palette = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    return palette[mask], mask, palette


def test_image_and_mask_share_geometry():
    image, mask, palette = block_scene()
    aug = TwoViewAugment(ViewAugment(size=64, **NO_PHOTO), ViewAugment(size=64, **NO_PHOTO))
    rng = np.random.default_rng(1)
    flips = set()
    for _ in range(10):
        for view in aug(image, mask, rng):
            img, m = view["image"].permute(1, 2, 0).numpy(), view["mask"].numpy()
            flips.add(view["flip"])
            assert img.shape == (64, 64, 3) and view["image"].dtype == torch.uint8
            assert view["mask"].dtype == torch.int64 and m.shape == (64, 64)
            # mask pixels away from a mask edge in the view must show their id's colour
            interior = np.ones_like(m, dtype=bool)
            for axis in (0, 1):
                edge = np.diff(m, axis=axis) != 0
                pad = [(0, 0), (0, 0)]
                pad[axis] = (1, 0)
                e1 = np.pad(edge, pad)
                pad[axis] = (0, 1)
                e2 = np.pad(edge, pad)
                grow = e1 | e2
                grow = grow | np.roll(grow, 1, axis) | np.roll(grow, -1, axis)
                interior &= ~grow
            assert interior.mean() > 0.3
            assert (np.abs(img[interior].astype(int) - palette[m[interior]]) <= 1).all()
    assert flips == {True, False}


def test_recorded_box_and_flip_reproduce_the_view():
    image = coord_image()
    mask = np.arange(120 * 160).reshape(120, 160) % 7
    aug = ViewAugment(size=48, **NO_PHOTO)
    rng = np.random.default_rng(3)
    t_img = torch.from_numpy(image).permute(2, 0, 1)
    for _ in range(8):
        view = aug(t_img, torch.from_numpy(mask), rng)
        x0, y0, x1, y1 = (int(v) for v in view["box"])
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        crop = t_img[:, y0:y1, x0:x1][None].float()
        ref = F.interpolate(
            crop, size=(48, 48), mode="bilinear", align_corners=False, antialias=True
        )
        ref = ref.round().clamp(0, 255).to(torch.uint8)[0]
        mref = torch.from_numpy(mask[y0:y1, x0:x1])[None, None].float()
        mref = F.interpolate(mref, size=(48, 48), mode="nearest-exact")[0, 0].long()
        if view["flip"]:
            ref, mref = ref.flip(-1), mref.flip(-1)
        assert torch.equal(view["image"], ref)
        assert torch.equal(view["mask"], mref)
        # coordinates decoded from the view match the box (flip undone): pixel-centre mapping
        u = torch.arange(48).float()
        sx = x0 + (u + 0.5) * (x1 - x0) / 48 - 0.5
        sy = y0 + (u + 0.5) * (y1 - y0) / 48 - 0.5
        r = view["image"][0].float()
        if view["flip"]:
            r = r.flip(-1)
        inner = slice(2, 46)
        assert (r[24, inner] - sx[inner]).abs().max() <= 1.0
        assert (view["image"][1, inner, 24].float() - sy[inner]).abs().max() <= 1.0


def test_photometric_ops_leave_mask_and_geometry_untouched():
    image, mask, _ = block_scene(seed=2)
    plain = ViewAugment(size=64, **NO_PHOTO)
    heavy = ViewAugment(size=64, **ALL_PHOTO)
    a = plain(
        torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask), np.random.default_rng(5)
    )
    b = heavy(
        torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask), np.random.default_rng(5)
    )
    assert torch.equal(a["mask"], b["mask"])
    assert torch.equal(a["box"], b["box"]) and a["flip"] == b["flip"]
    assert not torch.equal(a["image"], b["image"])
    # grayscale was applied: channels equal
    assert torch.equal(b["image"][0], b["image"][1])


def test_seeded_generator_is_reproducible_and_views_differ():
    image, mask, _ = block_scene(seed=4)
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.AUG.CROP_SIZE = 64
    aug = TwoViewAugment.from_config(cfg)
    assert aug.views[0].blur_prob == 1.0 and aug.views[1].blur_prob == 0.1
    assert aug.views[0].solarize_prob == 0.0 and aug.views[1].solarize_prob == 0.2
    v1 = aug(image, mask, np.random.default_rng(7))
    v2 = aug(image, mask, np.random.default_rng(7))
    v3 = aug(image, mask, np.random.default_rng(8))
    for a, b in zip(v1, v2, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(v1[0]["box"], v3[0]["box"])
    assert not torch.equal(v1[0]["box"], v1[1]["box"])


def test_crop_box_statistics():
    rng = np.random.default_rng(0)
    fracs = []
    for _ in range(300):
        x0, y0, x1, y1 = sample_crop_box(150, 150, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= x0 < x1 <= 150 and 0 <= y0 < y1 <= 150
        ratio = (x1 - x0) / (y1 - y0)
        assert 3 / 4 - 0.02 <= ratio <= 4 / 3 + 0.02
        fracs.append((x1 - x0) * (y1 - y0) / 22500)
    fracs = np.array(fracs)
    assert fracs.min() >= 0.07 and fracs.max() <= 1.0
    # area ~ U[0.08, 1], large areas with extreme ratios rejected (re-drawn)
    assert 0.3 < np.median(fracs) < 0.6
    # a sliver image cannot fit the ratio range: central crop with the clamped ratio
    assert sample_crop_box(10, 400, (0.9, 1.0), (3 / 4, 4 / 3), rng) == (193, 0, 206, 10)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(64) == 7


def test_bad_inputs_have_clear_errors():
    aug = TwoViewAugment(ViewAugment(size=32), ViewAugment(size=32))
    with pytest.raises(ValueError, match="mask shape"):
        aug(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 11), np.uint8), np.random.default_rng())
    with pytest.raises(ValueError, match="CROP_SCALE"):
        ViewAugment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="SOLARIZE_PROB"):
        ViewAugment(solarize_prob=2.0)


@pytest.mark.parametrize("out_size", [1, 7, 24, 32, 40, 96, 224])
def test_nearest_exact_index_is_torchs(out_size):
    from cyborgs.pretrain_data.augment import nearest_exact_index

    for n in range(1, 700):
        src = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1)
        ref = F.interpolate(src, size=(out_size, 1), mode="nearest-exact")[0, 0, :, 0].long()
        assert np.array_equal(nearest_exact_index(n, out_size), ref.numpy()), (n, out_size)


def test_label_map_views_equal_upsample_then_crop():
    """A view's mask sampled from a low-resolution label map equals the former route: upsample
    the map to the image (the store's nearest rule), then crop/resize/flip at full resolution."""
    from cyborgs.masks.store import upsample_nearest
    from cyborgs.pretrain_data.augment import crop_resize_label_map, crop_resize_mask

    rng = np.random.default_rng(0)
    for H, W, h, w, size in [
        (480, 640, 60, 80, 224),
        (480, 640, 60, 80, 96),
        (427, 640, 54, 80, 224),
        (333, 500, 41, 62, 224),
        (120, 160, 120, 160, 40),  # full resolution: the identity rule
        (50, 70, 100, 30, 24),  # a map larger than the image on one side
        (37, 23, 1, 1, 16),  # a whole-image map
    ]:
        label_map = rng.integers(0, 256, (h, w), dtype=np.uint8)
        full = torch.from_numpy(upsample_nearest(label_map, (H, W)))
        for _ in range(40):
            box = sample_crop_box(H, W, (0.02, 1.0), (0.5, 2.0), rng)
            flip = bool(rng.random() < 0.5)
            got = crop_resize_label_map(label_map, (H, W), box, flip, size)
            ref = crop_resize_mask(full, box, flip, size)
            assert got.dtype == np.uint8 and got.shape == (size, size)
            assert np.array_equal(got, ref.numpy()), (H, W, h, w, box, flip)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_crop_resize_mask_samples_pixel_centres(dtype):
    """Hand-computed: 5 source columns to 3 take the columns under the output pixel centres,
    floor((o + 0.5) * 5 / 3) = 0, 2, 4 (plain "nearest", floor(o * 5 / 3), would take 0, 1, 3);
    rows 1..3 of the box likewise become 1, 2, 3 (and the flip reverses the columns)."""
    from cyborgs.pretrain_data.augment import crop_resize_mask

    mask = (10 * torch.arange(6)[:, None] + torch.arange(7)[None, :]).to(dtype)  # id = 10 r + c
    out = crop_resize_mask(mask, (1, 1, 6, 4), False, 3)  # box x 1..5, y 1..3
    assert out.dtype == dtype
    assert out.tolist() == [[11, 13, 15], [21, 23, 25], [31, 33, 35]]
    assert crop_resize_mask(mask, (1, 1, 6, 4), True, 3).tolist() == [
        [15, 13, 11], [25, 23, 21], [35, 33, 31]
    ]  # fmt: skip


def test_centred_label_map_views_equal_place_then_crop():
    """With a cell centre (a bootstrap round's maps), a view's mask equals placing the map on
    the image first (each pixel to its nearest cell centre) and then cropping at full
    resolution; and it is not the nearest-upsampling view (the rule is really applied)."""
    from cyborgs.masks.cell_grid import upsample_label_map
    from cyborgs.pretrain_data.augment import crop_resize_label_map, crop_resize_mask

    rng = np.random.default_rng(1)
    differs = 0
    for H, W, h, w, size in [
        (96, 160, 12, 20, 208),
        (480, 640, 28, 37, 224),
        (150, 200, 12, 16, 64),
    ]:
        label_map = rng.integers(0, 256, (h, w), dtype=np.uint8)
        for centre in [(1 / 16, 1 / 16), (0.25, 0.75)]:
            full = torch.from_numpy(upsample_label_map(label_map, (H, W), centre))
            for _ in range(20):
                box = sample_crop_box(H, W, (0.02, 1.0), (0.5, 2.0), rng)
                flip = bool(rng.random() < 0.5)
                got = crop_resize_label_map(label_map, (H, W), box, flip, size, cell_centre=centre)
                ref = crop_resize_mask(full, box, flip, size)
                assert np.array_equal(got, ref.numpy()), (H, W, h, w, box, flip, centre)
                differs += not np.array_equal(
                    got, crop_resize_label_map(label_map, (H, W), box, flip, size)
                )
    assert differs > 100


def test_low_res_mask_shape_is_free_but_must_be_2d():
    aug = TwoViewAugment(ViewAugment(size=16, **NO_PHOTO), ViewAugment(size=16, **NO_PHOTO))
    img = np.zeros((40, 60, 3), np.uint8)
    views = aug(img, np.full((5, 8), 7, np.uint8), np.random.default_rng(0), low_res_mask=True)
    assert all(v["mask"].shape == (16, 16) and (v["mask"] == 7).all() for v in views)
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        aug(img, np.zeros((5, 8, 1), np.uint8), np.random.default_rng(0), low_res_mask=True)
