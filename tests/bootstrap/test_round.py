"""run_bootstrap_round on a tiny stand-in encoder over a few tiny images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from cyborgs.bootstrap.round import (
    RoundSettings,
    bootstrap_shard,
    compact_labels,
    run_bootstrap_round,
    shard_indices,
)
from cyborgs.config import add_cyborgs_config
from cyborgs.masks.store import MaskStore


class _ColourNet(torch.nn.Module):
    """Stride-8 "backbone": mean colour of each 8x8 cell (plus a constant so no feature is 0).
    Cells of one colour get identical features, so k-means must separate colours exactly."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("pixel_mean", torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1))
        self.calls = 0

    def extract_features(self, images, names):
        assert not self.training  # the round runs the encoder in eval mode
        self.calls += 1
        f = torch.nn.functional.avg_pool2d(images.float() / 255.0, 8)
        f = torch.cat([f, torch.full_like(f[:, :1], 0.5)], dim=1)
        return {n: f for n in names}


_PALETTE = np.array([[230, 20, 20], [20, 20, 230], [20, 200, 20]], np.uint8)


def _write_images(root, n=6, noise=False):
    """Images of two colour halves (two of a 3-colour palette; halves aligned to 8 px),
    or pure noise."""
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(n):
        h, w = (48, 64) if i % 2 else (64, 32)
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = _PALETTE[i % 3]
        img[:, w // 2 :] = _PALETTE[(i + 1) % 3]
        if noise:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = root / f"img{i}.png"
        Image.fromarray(img).save(p)
        dicts.append({"file_name": str(p), "image_id": i, "height": h, "width": w})
    return dicts


def test_round_maps_shapes_k_range_and_reproducible(tmp_path, round_settings):
    dicts = _write_images(tmp_path)
    model = _ColourNet().train()
    kw = dict(group_size=4, k_min=3, k_max=7, kmeans_iters=10, backend="torch",
              input_size=0, batch_size=3, seed=1)  # fmt: skip
    s1 = run_bootstrap_round(model, round_settings(**kw), dicts, MaskStore(str(tmp_path / "a")), 2)
    assert model.training  # restored
    assert s1["images"] == 6 and len(s1["k_values"]) == 2  # groups of 4 + 2
    assert s1["k_values"] == [3, 3]  # K >= 3 drawn, capped at the 3 distinct features
    man = s1["manifest"]
    assert man["settings"] == round_settings(**kw).manifest_fields()
    assert man["settings"]["k_min"] == 3 and man["settings"]["seed"] == 1
    assert man["epoch"] == man["iteration"] == -1 and man["source"] == "bootstrap"
    assert man["num_images"] == 6 and man["k_per_group"] == s1["k_values"]
    assert sum(man["k_histogram"].values()) == 2
    store_a = MaskStore(str(tmp_path / "a"))
    assert store_a.current_round() == 2
    for d in dicts:
        m = store_a.read(d["image_id"])
        assert m.dtype == np.uint8 and m.shape == (-(-d["height"] // 8), -(-d["width"] // 8))
        assert m.max() < max(s1["k_values"])
        # ids are compact: 0..n-1 in raster order of first appearance
        assert m.flat[0] == 0 and set(np.unique(m)) == set(range(len(np.unique(m))))
        # two colour halves never share a cluster; each half is one cluster (identical feats)
        w = m.shape[1]
        left, right = m[:, : w // 2], m[:, w // 2 :]
        assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1
        assert left[0, 0] != right[0, 0]
    # Same seed/round -> identical maps; batch size does not change the result.
    kw2 = dict(kw, batch_size=2)
    s2 = run_bootstrap_round(model, round_settings(**kw2), dicts, MaskStore(str(tmp_path / "b")), 2)
    assert s2["k_values"] == s1["k_values"]
    store_b = MaskStore(str(tmp_path / "b"))
    for d in dicts:
        np.testing.assert_array_equal(store_a.read(d["image_id"]), store_b.read(d["image_id"]))


def test_loader_workers_give_the_maps_of_the_in_process_round(tmp_path, round_settings):
    """Images loaded by 2 worker processes (the default config's path; every other test loads
    in the test process) give the same stored maps, byte for byte, and the same manifest."""
    dicts = _write_images(tmp_path, n=7, noise=True)  # no symmetry a loader bug could hide in
    kw = dict(group_size=3, k_min=2, k_max=4, kmeans_iters=5, backend="torch", input_size=0,
              batch_size=2, seed=3)  # fmt: skip
    out = {}
    for workers in (0, 2):
        settings = round_settings(**kw, num_workers=workers)
        store = MaskStore(str(tmp_path / f"w{workers}"))
        out[workers] = run_bootstrap_round(_ColourNet().eval(), settings, dicts, store, 1)
    assert out[2]["k_values"] == out[0]["k_values"] and out[2]["images"] == 7
    for key in ("num_images", "k_per_group", "k_histogram", "bytes"):
        assert out[2]["manifest"][key] == out[0]["manifest"][key], key
    a, b = MaskStore(str(tmp_path / "w0")), MaskStore(str(tmp_path / "w2"))
    for d in dicts:
        np.testing.assert_array_equal(b.read(d["image_id"]), a.read(d["image_id"]))


def test_manifest_merges_the_ranks_stats(round_settings):
    """Ranks work in parallel: the round took as long as its slowest rank (not the sum); groups
    and skipped images add up over the ranks, in rank order; world size = ranks reporting."""
    from cyborgs.bootstrap.round import round_manifest

    stats = [
        {"k_values": [3, 5], "time_s": 4.0, "skipped_images": 1, "skipped_files": ["a: bad"]},
        {"k_values": [5], "time_s": 7.5, "skipped_images": 2, "skipped_files": ["b: x", "c: y"]},
        {"k_values": [4, 4], "time_s": 1.0},
    ]
    man = round_manifest(stats, round_settings(), epoch=2, iteration=30)
    assert man["time_s"] == 7.5 and man["world_size"] == 3
    assert man["k_per_group"] == [3, 5, 5, 4, 4] and man["k_histogram"] == {"3": 1, "4": 2, "5": 2}
    assert man["k_mean"] == pytest.approx(21 / 5)
    assert man["skipped_images"] == 3 and man["skipped_files"] == ["a: bad", "b: x", "c: y"]
    assert (man["epoch"], man["iteration"], man["source"]) == (2, 30, "bootstrap")


def test_settings_come_from_the_config():
    cfg = add_cyborgs_config(get_cfg())
    b = cfg.CYBORGS.BOOTSTRAP
    b.FEATURES, b.GROUP_SIZE, b.K_MIN, b.K_MAX = ["res3.1", "res4"], 3, 4, 9
    b.KMEANS_ITERS, b.KMEANS_BACKEND, b.INPUT_SIZE, b.BORDER_PAD = 7, "torch", 96, 16
    b.BATCH_SIZE, b.CRF = 5, True
    cfg.SEED, cfg.DATALOADER.NUM_WORKERS, cfg.CYBORGS.DATA.MAX_ASPECT_RATIO = 11, 2, 6.0
    assert RoundSettings.from_cfg(cfg) == RoundSettings(
        features=("res3.1", "res4"), group_size=3, k_min=4, k_max=9, kmeans_iters=7,
        backend="torch", input_size=96, border_pad=16, batch_size=5, seed=11, crf=True,
        num_workers=2, max_aspect_ratio=6.0,
    )  # fmt: skip
    cfg.SEED = -1  # "random" in detectron2: rounds still need a fixed seed
    assert RoundSettings.from_cfg(cfg).seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        RoundSettings.from_cfg(cfg).k_min = 2


def test_rewriting_the_current_round(tmp_path, round_settings):
    """The offline tool reruns a round that may be current: readers see no round meanwhile,
    and the new maps become current."""
    dicts = _write_images(tmp_path, n=2)
    store = MaskStore(str(tmp_path / "s"))
    settings = round_settings(group_size=2, k_min=2, k_max=2, backend="torch", input_size=0)
    run_bootstrap_round(_ColourNet(), settings, dicts, store, 3)
    assert store.current_round() == 3
    seen = []
    write = store.write

    def watching_write(*args, **kwargs):
        seen.append(store.current_round())
        return write(*args, **kwargs)

    store.write = watching_write
    with pytest.raises(ValueError, match="round 3 is the current round"):
        run_bootstrap_round(_ColourNet(), settings, dicts, store, 3)  # not without asking
    assert store.current_round() == 3 and seen == []
    run_bootstrap_round(_ColourNet(), settings, dicts, store, 3, replace_current=True)
    assert seen == [None, None] and store.current_round() == 3 and store.rounds() == [3]


def test_input_size_resizes_shorter_side(tmp_path, round_settings):
    dicts = _write_images(tmp_path, n=2)
    store = MaskStore(str(tmp_path / "s"))
    settings = round_settings(group_size=2, k_min=2, k_max=2, backend="torch", input_size=32,
                              batch_size=2)  # fmt: skip
    run_bootstrap_round(_ColourNet(), settings, dicts, store, 0)
    # 64x32 -> 64x32 -> 8x4 cells; 48x64 -> 32x42.7, sides to multiples of the stride 8:
    # 32x40 -> 4x5 cells (not ceil(42.7 / 8) = 6 cells, the last one mostly off the image)
    assert store.read(0).shape == (8, 4) and store.read(1).shape == (4, 5)


@pytest.mark.parametrize("hw", [(480, 640), (426, 640), (375, 500)])  # COCO's usual shapes
def test_stored_map_lines_up_with_the_image(tmp_path, round_settings, hw):
    """Map cell j of a map w cells wide over a side of W pixels stands for pixels [j W / w,
    (j + 1) W / w) (the store's upsampling rule: column x -> cell floor(x w / W)). An image whose
    colour changes exactly at such a cell edge must come back from the stored map with the
    change there, give or take the resize's blur (2 px). At shorter side 224 a 480x640 image is
    224x298.7 px; ceil(298.7 / 8) = 38 cells cover 304 px, so a map stretched over the image put
    the change ~0.6 cell (10 px) off near the right edge."""
    H, W = hw
    d = {"file_name": str(tmp_path / "img.png"), "image_id": 0, "height": H, "width": W}
    settings = round_settings(group_size=1, k_min=2, k_max=2, backend="torch", input_size=224,
                              batch_size=1)  # fmt: skip

    def stored_map(cut: int) -> np.ndarray:
        img = np.zeros((H, W, 3), np.uint8)
        img[:] = _PALETTE[0]
        img[:, cut:] = _PALETTE[1]
        Image.fromarray(img).save(d["file_name"])
        store = MaskStore(str(tmp_path / f"s{cut}"))
        run_bootstrap_round(_ColourNet(), settings, [d], store, 0)
        return store.read(0)

    w = stored_map(W // 2).shape[1]  # the map's width, whatever the rounding
    # the resized side is 224 W / H within half a stride (8 px), and cells tile it exactly
    assert abs(8 * w - W * 224 / min(H, W)) <= 4
    cut = round((w - w // 8) * W / w)  # a cell edge near the right, where a stretched map is
    m = stored_map(cut)  # furthest off
    row = m[m.shape[0] // 2, (np.arange(W) * w) // W]  # the store's nearest rule
    left_id, right_id = row[0], row[-1]
    assert left_id != right_id
    wrong = np.flatnonzero(row != np.where(np.arange(W) < cut, left_id, right_id))
    assert wrong.size == 0 or np.abs(wrong - cut).max() <= 2, (wrong.min(), wrong.max(), cut)


def test_k_drawn_uniformly_in_range_per_group(tmp_path, round_settings):
    dicts = _write_images(tmp_path, n=12, noise=True)  # 12 groups of one 64-/48-px image
    store = MaskStore(str(tmp_path / "s"))
    settings = round_settings(group_size=1, k_min=2, k_max=9, kmeans_iters=3, backend="torch",
                              input_size=0, seed=3)  # fmt: skip
    s = run_bootstrap_round(_ColourNet(), settings, dicts, store, 0)
    ks = s["k_values"]
    assert len(ks) == 12 and all(2 <= k <= 9 for k in ks) and len(set(ks)) >= 4
    for d in dicts:
        m = store.read(d["image_id"])
        assert 2 <= len(np.unique(m)) <= 9


def test_k_is_capped_by_locations_and_kmin_kmax_validated(tmp_path, round_settings):
    dicts = _write_images(tmp_path, n=1)
    store = MaskStore(str(tmp_path / "s"))
    settings = round_settings(group_size=1, k_min=256, k_max=256, backend="torch", input_size=0)
    s = run_bootstrap_round(_ColourNet(), settings, dicts, store, 0)
    assert s["k_values"] == [2]  # only two distinct feature vectors exist
    dicts = _write_images(tmp_path, n=1, noise=True)
    s = run_bootstrap_round(_ColourNet(), dataclasses.replace(settings, kmeans_iters=1), dicts,
                            store, 2)  # fmt: skip
    assert s["k_values"] == [32]  # 8x4 locations


def test_shards_partition_the_data_set():
    shards = [shard_indices(10, 3, 0, 3, r) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
    assert not np.array_equal(shard_indices(10, 3, 0, 1, 0), shard_indices(10, 4, 0, 1, 0))


def test_compact_labels_keeps_partition():
    m = np.array([[7, 7, 3], [200, 3, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(compact_labels(m), [[0, 0, 1], [2, 1, 0]])


def test_round_with_crf_refinement(tmp_path, round_settings):
    dicts = _write_images(tmp_path, n=2)
    store = MaskStore(str(tmp_path / "s"))
    settings = round_settings(group_size=2, k_min=3, k_max=3, backend="torch", input_size=0,
                              crf=True)  # fmt: skip
    s = run_bootstrap_round(_ColourNet(), settings, dicts, store, 0)
    assert s["k_values"] == [3]
    for d in dicts:
        m = store.read(d["image_id"])
        w = m.shape[1]
        assert len(np.unique(m[:, : w // 2])) == 1 and m[0, 0] != m[0, -1]


class _ZeroPadNet(torch.nn.Module):
    """Stride-8 encoder of three 3x3 stride-2 convolutions with zero padding (like a ResNet
    stem): on a one-colour image, the top row and left column of its map differ from the rest."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(4, 4, 3, stride=2, padding=1) for _ in range(3)
        )
        for c in self.convs:
            torch.nn.init.constant_(c.weight, 1.0 / 36)
            # a bias, unlike the zero-padded sums, does not shrink at the border, so the border
            # features point elsewhere (not just shorter: features are L2-normalised)
            c.bias.data = torch.tensor([0.3, 0.0, 0.0, 0.0])

    def extract_features(self, images, names):
        x = images.float() / 255.0
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        for c in self.convs:
            x = c(x)
        return {n: x for n in names}


def test_border_pad_keeps_zero_padding_off_the_image(tmp_path, round_settings):
    p = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(p)
    dicts = [{"file_name": str(p), "image_id": 0, "height": 64, "width": 64}]
    kw = dict(group_size=1, k_min=2, k_max=2, kmeans_iters=5, backend="torch", input_size=0)
    maps = {}
    for pad in (0, 16):
        store = MaskStore(str(tmp_path / f"pad{pad}"))
        run_bootstrap_round(_ZeroPadNet(), round_settings(border_pad=pad, **kw), dicts, store, 0)
        maps[pad] = store.read(0)
    assert maps[0].shape == maps[16].shape == (8, 8)  # features cropped back to the image
    # unpadded: the zero-padded top row / left column form a segment of their own
    assert len(np.unique(maps[0])) == 2 and maps[0][0, 0] != maps[0][4, 4]
    assert len(np.unique(maps[0][1:, 1:])) == 1
    # mirrored frame: every location of the flat image has the same feature -> one segment
    assert len(np.unique(maps[16])) == 1


def test_border_pad_must_be_a_multiple_of_the_stride(tmp_path, round_settings):
    dicts = _write_images(tmp_path, n=1)
    store = MaskStore(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="BORDER_PAD=4 is not a multiple"):
        run_bootstrap_round(_ColourNet(), round_settings(border_pad=4, backend="torch",
                            input_size=0), dicts, store, 0)  # fmt: skip


@pytest.mark.gpu
def test_round_on_cuda_with_gpu_kmeans_gives_the_cpu_maps(tmp_path, round_settings):
    """Encoder and k-means on the GPU ("auto": FAISS-GPU or torch on CUDA): the same maps as
    the CPU round, since each colour's cells have identical features."""
    dicts = _write_images(tmp_path)
    kw = dict(group_size=4, k_min=3, k_max=7, kmeans_iters=10, input_size=0, batch_size=3,
              seed=1)  # fmt: skip
    cpu = MaskStore(str(tmp_path / "cpu"))
    run_bootstrap_round(_ColourNet().train(), round_settings(backend="torch", **kw), dicts, cpu, 2)
    gpu_model = _ColourNet().cuda().train()
    gpu = MaskStore(str(tmp_path / "gpu"))
    s = run_bootstrap_round(gpu_model, round_settings(backend="auto", **kw), dicts, gpu, 2)
    assert gpu_model.calls > 0 and s["images"] == len(dicts)
    for d in dicts:
        np.testing.assert_array_equal(gpu.read(d["image_id"]), cpu.read(d["image_id"]))


class _DivergedNet(_ColourNet):
    """The colour features with NaN in one image: what a diverged encoder gives."""

    def extract_features(self, images, names):
        f = super().extract_features(images, names)[names[0]].clone()
        f[0, :, 1, 1] = float("nan")
        return {n: f for n in names}


def test_nonfinite_features_stop_the_round_with_the_nonfinite_message(tmp_path, round_settings):
    from cyborgs.utils.nonfinite import NonFiniteLossError

    dicts = _write_images(tmp_path)
    settings = round_settings(group_size=4, k_min=3, k_max=3, kmeans_iters=5, backend="torch",
                              input_size=0, batch_size=6, seed=1)  # fmt: skip
    store = MaskStore(str(tmp_path / "m"))
    store.begin_round(5)
    with pytest.raises(NonFiniteLossError, match=r"round 5 at iteration 40: .* 1 of 4 images"):
        bootstrap_shard(_DivergedNet(), settings, dicts, store, 5, iteration=40)


def test_dicts_sharing_a_mask_key_are_refused_before_any_write(tmp_path, round_settings):
    """int 1 and str "1" are one mask key (``image_key``): two images would share a map. The
    refusal comes before anything is touched, even when rerunning the current round (which
    first drops it)."""
    dicts = _write_images(tmp_path, n=3)
    store = MaskStore(str(tmp_path / "s"))
    settings = round_settings(group_size=3, k_min=2, k_max=2, backend="torch", input_size=0)
    run_bootstrap_round(_ColourNet(), settings, dicts, store, 0)
    before = {d["image_id"]: store.read(d["image_id"]) for d in dicts}
    dicts[2]["image_id"] = "1"
    net = _ColourNet()
    for replace_current in (False, True):
        with pytest.raises(ValueError, match=r"img1\.png and .*img2\.png have the same image_id"):
            run_bootstrap_round(net, settings, dicts, store, 0, replace_current=replace_current)
    assert net.calls == 0 and store.rounds() == [0] and store.current_round() == 0
    for image_id, m in before.items():
        np.testing.assert_array_equal(store.read(image_id), m)
