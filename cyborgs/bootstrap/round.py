"""One bootstrapping round (paper §3.3, SPEC §3): features -> joint k-means per group -> store.

For this process's shard of the data set (``rank::world_size`` of a per-round permutation):
resize each image (shorter side ``input_size``, aspect kept), run the online backbone, take the
unit-norm bootstrap feature map, and cluster the locations of ``group_size`` images JOINTLY with
spherical k-means, K ~ Uniform{k_min..k_max} drawn per group from a generator seeded by (seed,
round, rank, group), capped at the number of locations. Every location gets its nearest
prototype; the label map is stored at feature resolution, its ids renumbered per image in order
of first appearance (ids are anonymous to the contrastive loss, which only compares ids within
one image, and compact ids compress 10-20% better).

Bad images: every image is read with :func:`cyborgs.data.image_io.read_image`; one it refuses
(unreadable, truncated, zero-size, aspect ratio above ``CYBORGS.DATA.MAX_ASPECT_RATIO``, ...)
gets no label map, is named in a warning and is counted in the stats and the round manifest
(``skipped_images``, ``skipped_files``); the round carries on. The training loader skips the
same images (same reader, same limit), so it never asks for their maps.

Bounded canvas: images of a batch are padded to one canvas, so one odd shape (a 4000x20 strip,
a portrait among landscapes) would pad every image of the batch to its extent. A batch is
therefore split, in order, into forwards whose padded canvas holds at most
``_MAX_PAD_FACTOR`` (2) times the pixels of its images' own padded extents: padding can at
most double a forward's memory, and an outlier shares its forward with at most one other
image. Order (and so the k-means groups) is unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cyborgs.data.image_io import (
    DEFAULT_MAX_ASPECT_RATIO,
    MAX_LISTED_SKIPPED,
    BadImageError,
    read_image,
)
from cyborgs.masks.store import MaskStore
from cyborgs.utils.progress import Progress

from .features import extract_bootstrap_features

__all__ = [
    "round_settings",
    "run_bootstrap_round",
    "shard_indices",
    "compact_labels",
    "load_resized_image",
]

logger = logging.getLogger(__name__)

# Images are padded to a multiple of this (the largest backbone stride) when batched, so every
# feature map's stride divides the padded size and the valid region of each image is exact.
_SIZE_DIVISIBILITY = 32
# A forward's padded canvas holds at most this many times its images' own padded pixels.
_MAX_PAD_FACTOR = 2.0


def round_settings(cfg) -> dict[str, Any]:
    """Keyword arguments of :func:`run_bootstrap_round` from ``cfg.CYBORGS.BOOTSTRAP`` (as the
    hook and ``tools/bootstrap_masks.py`` run it)."""
    b = cfg.CYBORGS.BOOTSTRAP
    return dict(
        features=list(b.FEATURES),
        group_size=b.GROUP_SIZE,
        k_min=b.K_MIN,
        k_max=b.K_MAX,
        kmeans_iters=b.KMEANS_ITERS,
        backend=b.KMEANS_BACKEND,
        input_size=b.INPUT_SIZE,
        border_pad=b.BORDER_PAD,
        batch_size=b.BATCH_SIZE,
        seed=max(cfg.SEED, 0),
        crf=b.CRF,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        max_aspect_ratio=float(cfg.CYBORGS.DATA.MAX_ASPECT_RATIO),
    )


def shard_indices(num_images: int, round_id: int, seed: int, world_size: int, rank: int):
    """This rank's images, in group order: a per-round permutation split ``rank::world_size``
    (groups then mix different images every round)."""
    order = np.random.default_rng([int(seed), int(round_id)]).permutation(num_images)
    return order[rank::world_size]


def compact_labels(label_map: np.ndarray) -> np.ndarray:
    """Renumber ids 0..n-1 in raster order of first appearance (same partition)."""
    flat = label_map.ravel()
    uniq, first = np.unique(flat, return_index=True)
    lut = np.zeros(int(uniq.max()) + 1, dtype=np.uint8)
    lut[uniq[np.argsort(first)]] = np.arange(len(uniq), dtype=np.uint8)
    return lut[label_map]


def load_resized_image(
    dataset_dict: dict, input_size: int, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
) -> np.ndarray:
    """RGB uint8 [H, W, 3], shorter side resized to ``input_size`` (0: as stored); raises
    :class:`~cyborgs.data.image_io.BadImageError` for an image the reader refuses."""
    img = read_image(dataset_dict["file_name"], max_aspect_ratio=max_aspect_ratio)
    if input_size > 0:
        h, w = img.shape[:2]
        s = input_size / min(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return np.array(img, dtype=np.uint8, order="C")  # writable: torch.from_numpy needs it


class _ImageList(torch.utils.data.Dataset):
    """``(image_id, image, None)``, or ``(image_id, None, "file: reason")`` for a bad image."""

    def __init__(
        self, dicts: Sequence[dict], indices: np.ndarray, input_size: int, max_aspect_ratio: float
    ):
        self.dicts, self.indices, self.input_size = dicts, indices, input_size
        self.max_aspect_ratio = max_aspect_ratio

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        d = self.dicts[int(self.indices[i])]
        try:
            image = load_resized_image(d, self.input_size, self.max_aspect_ratio)
        except BadImageError as e:
            return d["image_id"], None, f"{e.path}: {e.reason}"
        return d["image_id"], image, None


def _identity(x):
    return x


def _canvas_chunks(shapes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Split images (``(h, w)`` each, in order) into consecutive runs whose shared padded
    canvas ``n * H * W`` is at most ``_MAX_PAD_FACTOR`` times the sum of their own padded
    areas; a run always takes at least one image."""

    def up(v: int) -> int:
        return math.ceil(v / _SIZE_DIVISIBILITY) * _SIZE_DIVISIBILITY

    chunks: list[list[int]] = []
    cur: list[int] = []
    H = W = own = 0
    for i, (h, w) in enumerate(shapes):
        h2, w2 = max(H, up(h)), max(W, up(w))
        own2 = own + up(h) * up(w)
        if cur and (len(cur) + 1) * h2 * w2 > _MAX_PAD_FACTOR * own2:
            chunks.append(cur)
            cur, h2, w2, own2 = [], up(h), up(w), up(h) * up(w)
        cur.append(i)
        H, W, own = h2, w2, own2
    if cur:
        chunks.append(cur)
    return chunks


def _pad_batch(
    images: list[np.ndarray], pad_value: torch.Tensor, device, border: int = 0
) -> torch.Tensor:
    """Images at the top-left of a [B, 3, H, W] canvas (H, W multiples of the largest stride),
    each framed by ``border`` pixels of its own mirror image (see ``border_pad``)."""
    if border > 0:
        images = [np.pad(im, ((border, border), (border, border), (0, 0)), "symmetric")
                  for im in images]  # fmt: skip
    H = max(im.shape[0] for im in images)
    W = max(im.shape[1] for im in images)
    H = math.ceil(H / _SIZE_DIVISIBILITY) * _SIZE_DIVISIBILITY
    W = math.ceil(W / _SIZE_DIVISIBILITY) * _SIZE_DIVISIBILITY
    # Pad with the pixel mean (zero after the model's normalisation), as detectron2 does.
    out = pad_value.view(1, 3, 1, 1).expand(len(images), 3, H, W).clone()
    for i, im in enumerate(images):
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
        out[i, :, : im.shape[0], : im.shape[1]] = t
    return out.to(device, non_blocking=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bootstrap_round(
    model: torch.nn.Module,
    dataset_dicts: Sequence[dict],
    store: MaskStore,
    round_id: int,
    *,
    features: Sequence[str] = ("res3.2",),
    group_size: int = 16,
    k_min: int = 2,
    k_max: int = 256,
    kmeans_iters: int = 20,
    backend: str = "auto",
    input_size: int = 224,
    border_pad: int = 0,
    batch_size: int = 16,
    seed: int = 0,
    crf: bool = False,
    epoch: int = -1,
    iteration: int = -1,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    manage_round: bool = True,
    kmeans: Callable | None = None,
) -> dict[str, Any]:
    """Bootstrap this rank's shard into ``store`` round ``round_id`` (see the module docstring).

    ``manage_round`` (single process): begin the round first and finish (make current) after.
    Distributed callers (``BootstrapHook``) pass False and begin/finish around barriers.
    ``border_pad`` (pixels, a multiple of the feature stride; 0: off) mirrors each image that
    far outwards before the forward and crops the features back to the image: the backbone's
    zero padding then falls on the mirrored frame, so the image's own border locations do not
    form a "border" cluster of their own (stride-2 convolutions pad asymmetrically, which makes
    the top row and left column of a zero-padded map stand apart).
    ``kmeans`` defaults to ``cyborgs.clustering.spherical_kmeans``. Images the reader refuses
    (``max_aspect_ratio``: ``CYBORGS.DATA.MAX_ASPECT_RATIO``) are skipped, named and counted.

    Returns stats: images (label maps written), skipped_images, skipped_files ("file: reason"
    each), time_s, images_per_s, forward_s, forward_share (backbone forward
    time / total), kmeans_s, write_s (the rest is image loading and padding), k_values (K per group, after the cap), bytes, bytes_per_image, and the
    manifest when the round was finished here.
    """
    if not 1 <= k_min <= k_max <= 256:
        raise ValueError(
            f"CYBORGS.BOOTSTRAP.K_MIN/K_MAX must satisfy 1 <= K_MIN <= K_MAX <= 256 (uint8 "
            f"label maps), got {k_min}, {k_max}"
        )
    if group_size < 1 or batch_size < 1:
        raise ValueError("CYBORGS.BOOTSTRAP.GROUP_SIZE and BATCH_SIZE must be >= 1")
    if border_pad < 0:
        raise ValueError(f"CYBORGS.BOOTSTRAP.BORDER_PAD must be >= 0 pixels, got {border_pad}")
    if kmeans is None:
        from cyborgs.clustering import spherical_kmeans as kmeans
    if crf:
        from .crf import crf_refine_to_grid
    t_start = time.perf_counter()
    if manage_round:
        store.begin_round(round_id)

    net = model.module if hasattr(model, "module") else model
    device = next(net.parameters()).device
    pixel_mean = getattr(net, "pixel_mean", None)
    pad_value = (
        pixel_mean.detach().float().flatten().cpu()
        if isinstance(pixel_mean, torch.Tensor) and pixel_mean.numel() == 3
        else torch.zeros(3)
    )

    indices = shard_indices(len(dataset_dicts), round_id, seed, world_size, rank)
    loader = torch.utils.data.DataLoader(
        _ImageList(dataset_dicts, indices, input_size, max_aspect_ratio),
        batch_size=None,
        collate_fn=_identity,  # keep numpy images (the default converts them to tensors)
        num_workers=num_workers,
        prefetch_factor=4 if num_workers > 0 else None,
    )

    forward_s, kmeans_s, write_s, nbytes, k_values = 0.0, 0.0, 0.0, 0, []
    # Images stored so far, with rate and ETA, per rank (the summary line below ends it).
    progress = Progress(len(indices), f"bootstrap round {round_id} (rank {rank}/{world_size})",
                        logger)  # fmt: skip
    pending: list[tuple[Any, np.ndarray, torch.Tensor]] = []  # (image_id, image, feats[D,h,w])
    batch: list[tuple[Any, np.ndarray]] = []
    skipped: list[str] = []
    group_idx = 0

    def forward(part: list[tuple[Any, np.ndarray]]) -> None:
        nonlocal forward_s
        x = _pad_batch([im for _, im in part], pad_value, device, border_pad)
        _sync(device)
        t0 = time.perf_counter()
        feats = extract_bootstrap_features(net, x, features)
        _sync(device)
        forward_s += time.perf_counter() - t0
        stride = x.shape[-2] / feats.shape[-2]
        o = border_pad / stride
        if o != int(o):
            raise ValueError(
                f"CYBORGS.BOOTSTRAP.BORDER_PAD={border_pad} is not a multiple of the bootstrap "
                f"feature stride {stride:g} of {list(features)}"
            )
        o = int(o)
        for (image_id, im), f in zip(part, feats, strict=True):
            fh = math.ceil(im.shape[0] / stride)
            fw = math.ceil(im.shape[1] / stride)
            pending.append((image_id, im, f[:, o : o + fh, o : o + fw]))

    def flush_batch() -> None:
        shapes = [(im.shape[0] + 2 * border_pad, im.shape[1] + 2 * border_pad) for _, im in batch]
        for chunk in _canvas_chunks(shapes):  # bounded canvas, order kept
            forward([batch[i] for i in chunk])
        batch.clear()

    def cluster_group(items) -> None:
        nonlocal nbytes, group_idx, kmeans_s, write_s
        t0 = time.perf_counter()
        flat = [f.flatten(1).T for _, _, f in items]  # [h*w, D] each
        x = torch.cat(flat)
        _check_finite_group(x, items, round_id, iteration)
        rng = np.random.default_rng([int(seed), int(round_id), int(rank), group_idx])
        k = min(int(rng.integers(k_min, k_max + 1)), x.shape[0])
        gseed = int(rng.integers(2**31 - 1))
        centroids, _ = kmeans(x, k, iters=kmeans_iters, seed=gseed, backend=backend)
        centroids = F.normalize(centroids.float().to(x.device), dim=1)
        # Nearest prototype (max cosine) of every location, explicitly, whatever the backend.
        labels = (x @ centroids.T).argmax(dim=1)
        k_values.append(int(centroids.shape[0]))
        _sync(x.device)
        t1 = time.perf_counter()
        kmeans_s += t1 - t0
        start = 0
        for image_id, im, f in items:
            h, w = f.shape[-2:]
            lm = labels[start : start + h * w].view(h, w)
            start += h * w
            if crf:
                lm = crf_refine_to_grid(im, f, centroids, lm)
            lm_np = compact_labels(lm.cpu().numpy().astype(np.uint8))
            nbytes += store.write(round_id, image_id, lm_np)
        write_s += time.perf_counter() - t1
        group_idx += 1
        progress.update(len(items))

    was_training = net.training
    net.eval()
    try:
        for image_id, im, reason in loader:
            if im is None:
                logger.warning(f"bootstrap round {round_id}: skipping bad image {reason}")
                skipped.append(reason)
                continue
            batch.append((image_id, im))
            if len(batch) == batch_size:
                flush_batch()
            while len(pending) >= group_size:
                cluster_group(pending[:group_size])
                del pending[:group_size]
        if batch:
            flush_batch()
        while pending:
            cluster_group(pending[:group_size])
            del pending[:group_size]
    finally:
        net.train(was_training)
        progress.close(summary=False)

    n = len(indices) - len(skipped)
    total = time.perf_counter() - t_start
    stats: dict[str, Any] = {
        "round": int(round_id),
        "features": list(features),
        "images": n,
        "skipped_images": len(skipped),
        "skipped_files": skipped,
        "time_s": total,
        "images_per_s": n / total if total > 0 else 0.0,
        "forward_s": forward_s,
        "forward_share": forward_s / total if total > 0 else 0.0,
        "kmeans_s": kmeans_s,  # clustering + assignment
        "write_s": write_s,  # (CRF,) relabel, PNG encode, atomic write
        "k_values": k_values,
        "bytes": nbytes,
        "bytes_per_image": nbytes / max(n, 1),
    }
    if skipped:
        logger.warning(
            f"bootstrap round {round_id} (rank {rank}): {len(skipped)} bad image(s) skipped "
            f"(no label map): {'; '.join(skipped[:20])}" + (" ..." if len(skipped) > 20 else "")
        )
    logger.info(
        "bootstrap round %d (rank %d/%d): %d images in %.1fs (%.1f img/s, forward %.0f%%), "
        "mean K %.1f, %.0f B/image",
        round_id,
        rank,
        world_size,
        n,
        total,
        stats["images_per_s"],
        100 * stats["forward_share"],
        float(np.mean(k_values)) if k_values else 0.0,
        stats["bytes_per_image"],
    )
    if manage_round:
        stats["manifest"] = store.finish_round(
            round_id,
            round_manifest(
                [stats],
                epoch=epoch,
                iteration=iteration,
                features=features,
                source="bootstrap",
                settings=dict(
                    group_size=group_size,
                    k_min=k_min,
                    k_max=k_max,
                    kmeans_iters=kmeans_iters,
                    input_size=input_size,
                    border_pad=border_pad,
                    seed=seed,
                    crf=crf,
                ),
            ),
        )
    return stats


def _check_finite_group(x: torch.Tensor, items: Sequence, round_id: int, iteration: int) -> None:
    """Non-finite features would crash k-means++ ("invalid multinomial distribution"): stop
    with the engine's non-finite message instead (the hook adds the last good checkpoint)."""
    if bool(torch.isfinite(x).all()):
        return
    from cyborgs.engine.nonfinite import NonFiniteLossError

    bad = [str(image_id) for image_id, _, f in items if not bool(torch.isfinite(f).all())]
    raise NonFiniteLossError(
        f"Non-finite bootstrap features in round {round_id} at iteration {iteration}: the "
        f"online encoder gives NaN/inf for {len(bad)} of {len(items)} images of a group "
        f"(image ids {bad[:5]}), so the weights have diverged",
        iteration,
    )


def round_manifest(
    rank_stats: Sequence[dict],
    *,
    epoch: int,
    iteration: int,
    features: Sequence[str],
    source: str,
    settings: dict | None = None,
) -> dict[str, Any]:
    """Manifest fields of a round from every rank's stats (K per group and its histogram, the
    images skipped as bad: their count and, at most ``MAX_LISTED_SKIPPED``, their files)."""
    k_values = [k for s in rank_stats for k in s["k_values"]]
    skipped = [f for s in rank_stats for f in s.get("skipped_files", [])]
    return {
        "epoch": int(epoch),
        "iteration": int(iteration),
        "features": list(features),
        "source": source,
        "k_per_group": k_values,
        "k_histogram": {str(k): c for k, c in sorted(Counter(k_values).items())},
        "k_mean": float(np.mean(k_values)) if k_values else 0.0,
        "time_s": max((s["time_s"] for s in rank_stats), default=0.0),
        "world_size": len(rank_stats),
        "skipped_images": sum(int(s.get("skipped_images", 0)) for s in rank_stats),
        "skipped_files": skipped[:MAX_LISTED_SKIPPED],
        "settings": settings or {},
    }
