"""Batched device-side photometric ops (CYBORGS.AUG.DEVICE) against torchvision, rates, masks."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from detectron2.config import get_cfg
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.data import device_augment as DA
from cyborgs.pretrain_data.augment import TwoViewAugment, ViewAugment, device_augment_enabled
from cyborgs.pretrain_data.two_view_mapper import TwoViewDatasetMapper

NO_PHOTO = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def _images(b=6, size=24, seed=0):
    """uint8 [B,3,S,S] with smooth parts, noise, grey pixels and saturated pixels (hue edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    x[:, :, :4] = x[:, :1, :4]  # grey rows (r = g = b)
    x[:, 0, 4:6], x[:, 1, 4:6], x[:, 2, 4:6] = 255, 0, 0  # pure red
    x[:, :, 6, :] = 0
    x[:, :, 7, :] = 255
    x[:, 1, 8:10] = x[:, 0, 8:10]  # ties between max channels
    return x


def _close(batched: torch.Tensor, reference: torch.Tensor, tol: int = 1) -> None:
    diff = (batched.float() - reference.float()).abs()
    assert diff.max() <= tol, f"max |diff| {diff.max()} > {tol}"


_OPS = {
    # name: (batched op, torchvision's functional op on one uint8 image, per-image parameters);
    # the CPU tests and the CUDA test read the same table
    "brightness": (DA.adjust_brightness, TF.adjust_brightness, [0.6, 0.0, 1.0, 1.4, 2.5, 0.93]),
    "contrast": (DA.adjust_contrast, TF.adjust_contrast, [0.6, 0.0, 1.0, 1.4, 2.5, 0.93]),
    "saturation": (DA.adjust_saturation, TF.adjust_saturation, [0.8, 0.0, 1.0, 1.2, 3.0, 0.5]),
    "hue": (DA.adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.1, 0.5, -0.5, 0.033]),
    "grayscale": (
        lambda x, _: DA.rgb_to_grayscale(x),
        lambda im, _: TF.rgb_to_grayscale(im, num_output_channels=3),
        [None] * 6,
    ),
    "solarize": (lambda x, _: DA.solarize(x), lambda im, _: TF.solarize(im, 128), [None] * 6),
    "blur": (
        lambda x, s: DA.gaussian_blur(x, s, 23),
        lambda im, s: TF.gaussian_blur(im, [23, 23], [s, s]),
        [0.1, 0.5, 0.9, 1.3, 1.7, 2.0],
    ),
}


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_ops_match_torchvision_per_image(name):
    batched, per_image, factors = _OPS[name]
    x = _images()
    out = batched(x.float(), torch.tensor(factors))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, out.round()), f"{name}: values must stay integers (uint8 semantics)"
    ref = torch.stack([per_image(x[i], factors[i]) for i in range(len(factors))])
    _close(out, ref)


def test_identity_parameters_leave_images_exactly_unchanged():
    x = _images().float()
    ones, zeros = torch.ones(6), torch.zeros(6)
    for op, f in ((DA.adjust_brightness, ones), (DA.adjust_contrast, ones)):
        assert torch.equal(op(x, f), x)
    assert torch.equal(DA.adjust_saturation(x, ones), x)
    assert torch.equal(DA.adjust_hue(x, zeros), x)
    assert torch.equal(DA.gaussian_blur(x, zeros, 7), x)


def test_grayscale_and_solarize_match_torchvision():
    x = _images()
    gray = DA.rgb_to_grayscale(x.float())
    ref = torch.stack([TF.rgb_to_grayscale(im, num_output_channels=3) for im in x])
    _close(gray, ref, tol=0)
    sol = DA.solarize(x.float())
    _close(sol, torch.stack([TF.solarize(im, 128) for im in x]), tol=0)


def test_gaussian_blur_per_image_sigma_matches_torchvision():
    x = _images(b=4, size=32, seed=1)
    sigmas = [0.1, 0.7, 1.3, 2.0]
    for k in (7, 23):
        out = DA.gaussian_blur(x.float(), torch.tensor(sigmas), k)
        ref = torch.stack([TF.gaussian_blur(x[i], [k, k], [s, s]) for i, s in enumerate(sigmas)])
        _close(out, ref)
    # the kernel from its definition: exp(-i^2 / (2 sigma^2)), normalised
    w = DA.gaussian_kernel1d(torch.tensor([1.5, 0.0]), 5)
    i = torch.arange(-2.0, 3.0)
    ref = torch.exp(-(i**2) / (2 * 1.5**2))
    assert torch.allclose(w[0], ref / ref.sum())
    assert torch.equal(w[1], torch.tensor([0.0, 0, 1, 0, 0]))


def _drawn(view: ViewAugment, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [view.draw_photometric(rng) for _ in range(n)]


@pytest.mark.parametrize(
    "probs",
    [
        dict(color_jitter_prob=1.0, grayscale_prob=0.3, solarize_prob=0.5),
        # some images without jitter / blur: ops run on the images that draw them only
        dict(color_jitter_prob=0.5, grayscale_prob=0.0, blur_prob=0.5, solarize_prob=0.0),
        dict(**NO_PHOTO),
    ],
)
def test_batched_chain_equals_the_cpu_chain_with_the_same_parameters(probs):
    view = ViewAugment(size=24, **probs)
    params = _drawn(view, 8, seed=2)
    x = _images(b=8, size=24, seed=3)
    out = DA.apply_photometric(x, DA.stack_photometric(params, "cpu"))
    ref = torch.stack([ViewAugment.apply_photometric(x[i], p) for i, p in enumerate(params)])
    diff = (out - ref.float()).abs()
    # each op agrees within 1; a grey level off by one can grow through later factors
    assert diff.max() <= 3 and diff.mean() < 0.05
    # op orders differ within the batch and are honoured per image
    assert len({tuple(p["order"]) for p in params}) > 1
    if probs.get("blur_prob") == 0.5:  # the mixed case really mixes
        assert 0 < sum(p["jitter"] for p in params) < 8
        assert 0 < sum(p["blur_sigma"] > 0 for p in params) < 8
    if probs == NO_PHOTO:
        assert torch.equal(out, x.float())
    else:
        assert not torch.equal(out, x.float())


def test_parameter_records_are_plain_and_checked():
    p = _drawn(ViewAugment(size=224), 1, seed=0)[0]
    assert set(p) == set(DA.PHOTOMETRIC_KEYS) and p["blur_kernel"] == 23
    assert sorted(p["order"]) == [0, 1, 2, 3]
    assert all(type(v) in (bool, int, float, list) for v in p.values())
    with pytest.raises(KeyError, match="blur_sigma"):
        DA.stack_photometric([{k: v for k, v in p.items() if k != "blur_sigma"}], "cpu")
    with pytest.raises(ValueError, match="blur kernel"):
        DA.stack_photometric([p, dict(p, blur_kernel=7)], "cpu")


def _cfg(device="on", size=16):
    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.CYBORGS.AUG.CROP_SIZE = size
    cfg.CYBORGS.AUG.DEVICE = device
    return cfg


def test_aug_device_switch_resolution():
    for value, want in (("on", True), ("off", False), (True, True), (False, False), ("ON", True)):
        assert device_augment_enabled(_cfg(value)) is want
    cfg = _cfg("auto")
    assert device_augment_enabled(cfg) is False  # MODEL.DEVICE cpu
    cfg.MODEL.DEVICE = "cuda"
    assert device_augment_enabled(cfg) is torch.cuda.is_available()
    with pytest.raises(ValueError, match="CYBORGS.AUG.DEVICE"):
        device_augment_enabled(_cfg("gpu"))
    assert TwoViewAugment.from_config(_cfg("on")).photometric_on_device
    assert not TwoViewAugment.from_config(_cfg("off")).photometric_on_device


def _scene(h=40, w=52, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (rng.integers(0, 5, (h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1))[:h, :w]
    return img, mask.astype(np.uint8)


def test_both_paths_draw_the_same_geometry_and_parameters_and_rates():
    """Same per-sample generator -> same boxes, flips, masks, photometric parameters; the
    drawn rates are the BYOL ones (jitter 0.8, grayscale 0.2, blur 1.0 / 0.1, solarize 0 / 0.2)
    and the grayscale the CPU path applied is exactly where the device path drew it."""
    img, mask = _scene()
    cpu = TwoViewAugment.from_config(_cfg("off"))
    dev = TwoViewAugment.from_config(_cfg("on"))
    n, n_cpu = 1000, 60  # the CPU path's per-image ops are slow: compare it on a prefix
    flags = {k: np.zeros((n, 2)) for k in ("jitter", "grayscale", "blur", "solarize")}
    for s in range(n):
        b = dev(img, mask, np.random.default_rng([7, s]))
        a = cpu(img, mask, np.random.default_rng([7, s])) if s < n_cpu else None
        for v in range(2):
            p = b[v]["photometric"]
            flags["jitter"][s, v] = p["jitter"]
            flags["grayscale"][s, v] = p["grayscale"]
            flags["blur"][s, v] = p["blur_sigma"] > 0
            flags["solarize"][s, v] = p["solarize"]
            if a is None:
                continue
            assert torch.equal(a[v]["box"], b[v]["box"]) and a[v]["flip"] == b[v]["flip"]
            assert b[v]["mask"].dtype == torch.uint8 and a[v]["mask"].dtype == torch.int64
            assert torch.equal(a[v]["mask"], b[v]["mask"].long())
            im = a[v]["image"]
            cpu_gray = bool((im[0] == im[1]).all() and (im[1] == im[2]).all())
            assert cpu_gray == p["grayscale"]  # random 40x52 content is never grey by chance
    rates = {k: f.mean(axis=0) for k, f in flags.items()}
    tol = 4 * np.sqrt(0.25 / n)  # 4 binomial standard deviations at worst
    expected = {"jitter": (0.8, 0.8), "grayscale": (0.2, 0.2), "blur": (1.0, 0.1)}
    expected["solarize"] = (0.0, 0.2)
    for k, (p1, p2) in expected.items():
        assert abs(rates[k][0] - p1) <= tol and abs(rates[k][1] - p2) <= tol, (k, rates[k])


def test_device_path_images_match_the_cpu_path_after_the_batched_ops():
    img, mask = _scene(seed=1)
    cpu = TwoViewAugment.from_config(_cfg("off", size=24))
    dev = TwoViewAugment.from_config(_cfg("on", size=24))
    for v in range(2):
        a = [cpu(img, mask, np.random.default_rng([3, s]))[v] for s in range(12)]
        b = [dev(img, mask, np.random.default_rng([3, s]))[v] for s in range(12)]
        params = DA.stack_photometric([d["photometric"] for d in b], "cpu")
        out = DA.apply_photometric(torch.stack([d["image"] for d in b]), params)
        ref = torch.stack([d["image"] for d in a]).float()
        # uint8 geometry kernel (within 1 of the float one) + the chain: same images up to
        # rare small rounding differences
        diff = (out - ref).abs()
        assert diff.mean() < 0.5 and (diff <= 2).float().mean() > 0.97


def test_device_path_mask_stays_aligned_with_image_pixels(tmp_path):
    """Coordinate image (R = x, G = y) and a mask of x // 8: after crop/resize/flip the view's
    mask id must match the x its pixels encode."""
    h, w = 120, 160
    ys, xs = np.mgrid[0:h, 0:w]
    Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)).save(
        tmp_path / "coord.png"
    )

    def x_mask(d, image):
        return (np.broadcast_to(np.arange(image.shape[1]) // 8, image.shape[:2])).astype(np.uint8)

    view = ViewAugment(size=40, **NO_PHOTO)
    mapper = TwoViewDatasetMapper(
        augment=TwoViewAugment(view, view, photometric_on_device=True), mask_source=x_mask
    )
    flips = set()
    for s in range(20):
        out = mapper({"file_name": str(tmp_path / "coord.png")}, rng=np.random.default_rng(s))
        for v in out["views"]:
            flips.add(v["flip"])
            x_of_pixel = v["image"][0].float()  # R channel = source x (resampled)
            ids = v["mask"].float()
            # the id's x range is [8 id, 8 id + 8); a pixel's sampled x lies in it up to the
            # resampling footprint of one view pixel
            scale = float(v["box"][2] - v["box"][0]) / 40
            slack = 0.5 * scale + 1.0
            assert (x_of_pixel >= 8 * ids - slack).all() and (
                x_of_pixel <= 8 * ids + 8 + slack
            ).all()
            x0 = float(v["box"][0])
            col = torch.arange(40).float()
            if v["flip"]:
                col = col.flip(0)
            expected = x0 + (col + 0.5) * scale - 0.5
            inner = slice(2, 38)
            assert (x_of_pixel[20, inner] - expected[inner]).abs().max() <= 1.0
    assert flips == {True, False}


class _CellMapSource:
    """A stored-map source: a 12x16 map of 10x10-pixel cells of a 120x160 image, id = 16 row +
    col; ``__call__`` is the full-resolution map (the store's nearest upsampling)."""

    def __init__(self):
        self.map = (np.arange(12)[:, None] * 16 + np.arange(16)[None, :]).astype(np.uint8)
        self.calls = []

    def label_map(self, d, image_hw):
        self.calls.append("label_map")
        return self.map

    def __call__(self, d, image):
        self.calls.append("full")
        return np.kron(self.map, np.ones((10, 10), np.uint8))


@pytest.mark.parametrize("device", [True, False])
def test_low_res_label_map_mask_stays_aligned_with_image_pixels(tmp_path, device):
    """Views cropped from a stored low-resolution map: each view pixel's id is the cell of the
    source pixel the geometry says it samples, and agrees with the pixel's own coordinates
    (coordinate image, R = x, G = y)."""
    h, w, size = 120, 160, 40
    ys, xs = np.mgrid[0:h, 0:w]
    Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)).save(
        tmp_path / "coord.png"
    )
    source = _CellMapSource()
    view = ViewAugment(size=size, **NO_PHOTO)
    mapper = TwoViewDatasetMapper(
        augment=TwoViewAugment(view, view, photometric_on_device=device), mask_source=source
    )
    flips = set()
    for s in range(20):
        out = mapper({"file_name": str(tmp_path / "coord.png")}, rng=np.random.default_rng(s))
        for v in out["views"]:
            flips.add(v["flip"])
            m = v["mask"].long()
            assert v["mask"].dtype == (torch.uint8 if device else torch.int64)
            x0, y0, x1, y1 = (int(c) for c in v["box"])
            # nearest sampling of the crop: view pixel k of n sits at source
            # floor((k + 0.5) * crop / n) of the crop (the pixel whose span holds its centre)
            k = torch.arange(size, dtype=torch.float64)
            sy = y0 + torch.floor((k + 0.5) * (y1 - y0) / size).long()
            sx = x0 + torch.floor((k + 0.5) * (x1 - x0) / size).long()
            if v["flip"]:
                sx = sx.flip(0)
            expected = (sy // 10)[:, None] * 16 + (sx // 10)[None, :]
            # a centre exactly on a source-pixel edge may round either way in float32
            assert (m == expected).float().mean() > 0.99
            assert ((m % 16 - sx[None, :] // 10).abs() <= 1).all()
            assert ((m // 16 - sy[:, None] // 10).abs() <= 1).all()
            # and with the pixels: the cell of a view pixel holds (up to the resampling
            # footprint) the x, y its R, G values encode
            img = v["image"].float()
            slack_x = 0.5 * (x1 - x0) / size + 1.0
            slack_y = 0.5 * (y1 - y0) / size + 1.0
            cx, cy = (m % 16).float(), (m // 16).float()
            assert (img[0] >= 10 * cx - slack_x).all() and (img[0] <= 10 * cx + 10 + slack_x).all()
            assert (img[1] >= 10 * cy - slack_y).all() and (img[1] <= 10 * cy + 10 + slack_y).all()
    assert flips == {True, False}
    assert set(source.calls) == {"label_map"}  # the full-resolution map is never built


@pytest.mark.gpu
def test_batched_ops_on_cuda_match_the_cpu():
    view = ViewAugment(size=32, color_jitter_prob=1.0, grayscale_prob=0.3, solarize_prob=0.5)
    params = _drawn(view, 16, seed=4)
    x = _images(b=16, size=32, seed=5)
    cpu = DA.apply_photometric(x, DA.stack_photometric(params, "cpu"))
    cuda = DA.apply_photometric(x.cuda(), DA.stack_photometric(params, "cuda"))
    assert cuda.device.type == "cuda"
    diff = (cuda.cpu() - cpu).abs()
    assert diff.max() <= 3 and diff.mean() < 0.05
    cfg = _cfg("auto")
    cfg.MODEL.DEVICE = "cuda"
    assert device_augment_enabled(cfg)  # "auto" turns the device path on with CUDA


def _cuda_op_vs_torchvision(name: str) -> None:
    """Batched op on CUDA (float32 holding uint8 values) vs torchvision's functional op on each
    uint8 image on the CPU (the reference by definition), within 1/255."""
    batched, per_image, params = _OPS[name]
    x = _images(b=6, size=48, seed=11)
    arg = None if params[0] is None else torch.tensor(params, device="cuda")
    out = batched(x.cuda().float(), arg)
    assert out.device.type == "cuda" and out.shape == x.shape
    ref = torch.stack([per_image(x[i], params[i]) for i in range(len(params))])
    assert ref.dtype == torch.uint8
    _close(out.cpu(), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(_OPS))
def test_each_batched_op_on_cuda_matches_torchvision(name):
    """TF32 off for cuDNN convolutions and matmuls (the blur is a convolution; Hopper may run
    fp32 convolutions in TF32), restored afterwards."""
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            _cuda_op_vs_torchvision(name)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


@pytest.mark.gpu
def test_blur_on_cuda_with_tf32_allowed_matches_torchvision():
    """The training process leaves cuDNN's TF32 allowed (PyTorch's default), and the model
    applies the blur there. The pixels are integers <= 255, exact in TF32; rounding the
    weights and the row-pass intermediate to TF32 (relative 2^-11 each) moves a blurred value
    by at most about 2 * 255 * 2^-11 = 0.25 before the final rounding, so the result must still
    be within 1 of torchvision's. If this fails while the TF32-off test passes, the op itself
    should disable TF32 (report it; cyborgs/data/device_augment.py does not today)."""
    with torch.backends.cudnn.flags(
        enabled=True,
        benchmark=torch.backends.cudnn.benchmark,
        deterministic=torch.backends.cudnn.deterministic,
        allow_tf32=True,
    ):
        _cuda_op_vs_torchvision("blur")


def test_device_path_views_share_one_block_per_sample():
    """Device path, uint8 label map: both views' images, masks and boxes live in one storage
    (one shared-memory segment per sample from a loader worker), with the same values as views
    made one by one."""
    img, mask = _scene(seed=2)
    aug = TwoViewAugment.from_config(_cfg("on", size=24))
    mask8 = np.asarray(mask, dtype=np.uint8)
    for s in range(6):
        views = aug(img, mask8, np.random.default_rng([5, s]))
        ptrs = set()
        for v in views:
            for k in ("image", "mask", "box"):
                assert v[k].is_contiguous()
                ptrs.add(v[k].untyped_storage().data_ptr())
            assert v["image"].dtype == torch.uint8 and v["mask"].dtype == torch.uint8
            assert v["box"].dtype == torch.float32 and v["box"].shape == (4,)
        assert len(ptrs) == 1
        rng = np.random.default_rng([5, s])
        image_t = torch.from_numpy(img).permute(2, 0, 1)
        for view_aug, v in zip(aug.views, views, strict=True):
            alone = view_aug(image_t, mask8, rng, photometric_on_device=True)
            for k in ("image", "mask", "box"):
                assert torch.equal(alone[k], v[k]), k
            assert alone["flip"] == v["flip"] and alone["photometric"] == v["photometric"]
