"""One bootstrapping round (paper §3.3, METHOD.md §3): features -> joint k-means per group -> store.

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

API: :class:`RoundSettings` (``RoundSettings.from_cfg(cfg)``) says how rounds run;
:func:`run_bootstrap_round` runs a whole round in one process (offline tool, tests), and
:func:`bootstrap_shard` one rank's shard of it (``BootstrapHook`` begins and finishes the round
around barriers). Both finish with the same manifest, :func:`round_manifest`.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_LISTED_SKIPPED,
    BadImageError,
    read_image,
)
from cyborgs.masks.cell_grid import cell_grid_record
from cyborgs.masks.store import MaskStore, check_unique_image_ids
from cyborgs.utils import preemption
from cyborgs.utils.progress import Progress

from .features import extract_bootstrap_features
from .receptive_field import measure_cell_grid

__all__ = [
    "RoundSettings",
    "run_bootstrap_round",
    "bootstrap_shard",
    "round_manifest",
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


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    """How a bootstrapping round runs (paper §3.3, METHOD.md §3). Build it with :meth:`from_cfg`
    (every value comes from the config; none is defaulted here) and vary it with
    ``dataclasses.replace``. Its values are those of a validated config: every check lives
    once, in ``cyborgs.config.checks`` (``check_bootstrap``, ``check_model``).

    Attributes:
        features: backbone blocks clustered, fused when several (``BOOTSTRAP.FEATURES``).
        group_size: images clustered jointly (``BOOTSTRAP.GROUP_SIZE``).
        k_min, k_max: K ~ Uniform{k_min..k_max} per group, 2 <= k_min <= k_max <= 256.
        kmeans_iters: Lloyd iterations (``BOOTSTRAP.KMEANS_ITERS``).
        backend: k-means backend, "auto" or a ``KMEANS_BACKEND_REGISTRY`` name.
        input_size: shorter side fed to the encoder (0: as stored).
        border_pad: pixels of mirrored frame (a multiple of the feature stride; 0: off).
        batch_size: images per forward (``BOOTSTRAP.BATCH_SIZE``).
        seed: seeds the per-round order and every group's K and k-means init (``SEED``, >= 0).
        crf: dense-CRF refinement of the maps (``BOOTSTRAP.CRF``).
        num_workers: image-loading workers (``DATALOADER.NUM_WORKERS``).
        max_aspect_ratio: images beyond it are skipped as bad (``DATA.MAX_ASPECT_RATIO``).
        max_pixels: images above it are skipped as bad, undecoded (``DATA.MAX_IMAGE_PIXELS``).
    """

    features: tuple[str, ...]
    group_size: int
    k_min: int
    k_max: int
    kmeans_iters: int
    backend: str
    input_size: int
    border_pad: int
    batch_size: int
    seed: int
    crf: bool
    num_workers: int
    max_aspect_ratio: float
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))

    @classmethod
    def from_cfg(cls, cfg) -> RoundSettings:
        """The settings of ``cfg.CYBORGS.BOOTSTRAP`` (as the hook and the offline tool run)."""
        b = cfg.CYBORGS.BOOTSTRAP
        return cls(
            features=tuple(b.FEATURES),
            group_size=int(b.GROUP_SIZE),
            k_min=int(b.K_MIN),
            k_max=int(b.K_MAX),
            kmeans_iters=int(b.KMEANS_ITERS),
            backend=str(b.KMEANS_BACKEND),
            input_size=int(b.INPUT_SIZE),
            border_pad=int(b.BORDER_PAD),
            batch_size=int(b.BATCH_SIZE),
            seed=max(int(cfg.SEED), 0),
            crf=bool(b.CRF),
            num_workers=int(cfg.DATALOADER.NUM_WORKERS),
            max_aspect_ratio=float(cfg.CYBORGS.DATA.MAX_ASPECT_RATIO),
            max_pixels=int(cfg.CYBORGS.DATA.MAX_IMAGE_PIXELS),
        )

    def manifest_fields(self) -> dict[str, Any]:
        """The settings that shape a round's masks, as its manifest records them ("settings";
        ``features`` has a manifest key of its own; batching and loader workers do not change
        the maps, and images skipped for their aspect ratio are listed)."""
        return {
            "group_size": self.group_size,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "kmeans_iters": self.kmeans_iters,
            "kmeans_backend": self.backend,
            "input_size": self.input_size,
            "border_pad": self.border_pad,
            "seed": self.seed,
            "crf": self.crf,
        }


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
    dataset_dict: dict,
    input_size: int,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    multiple: int = 1,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """RGB uint8 [H, W, 3], shorter side resized to ``input_size`` (0: as stored), then both
    sides rounded to a multiple of ``multiple``; raises
    :class:`~cyborgs.data.image_io.BadImageError` for an image the reader refuses.

    A round passes its map's grid stride as ``multiple``: the feature map then has exactly
    side / s cells per side, so a stored map's extent says how it lies on its image (cell j
    centred at (j + c) N / n on a side of N pixels, ``cyborgs.masks.cell_grid``). With
    ceil(side / s) cells over a side that is not a multiple, the last cell reaches past the
    image and every cell lands up to that overhang (~0.6 cell at 299 px) off its pixels. The
    rounding changes the aspect ratio by at most s / 2 pixels per side."""
    img = read_image(
        dataset_dict["file_name"], max_aspect_ratio=max_aspect_ratio, max_pixels=max_pixels
    )
    h, w = img.shape[:2]
    scale = input_size / min(h, w) if input_size > 0 else 1.0
    m = max(1, int(multiple))
    nh, nw = (max(m, round(v * scale / m) * m) for v in (h, w))
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return np.array(img, dtype=np.uint8, order="C")  # writable: torch.from_numpy needs it


class _ImageList(torch.utils.data.Dataset):
    """``(image_id, image, None)``, or ``(image_id, None, "file: reason")`` for a bad image."""

    def __init__(
        self,
        dicts: Sequence[dict],
        indices: np.ndarray,
        input_size: int,
        max_aspect_ratio: float,
        multiple: int,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        self.dicts, self.indices, self.input_size = dicts, indices, input_size
        self.max_aspect_ratio, self.multiple = max_aspect_ratio, multiple
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        d = self.dicts[int(self.indices[i])]
        try:
            image = load_resized_image(
                d, self.input_size, self.max_aspect_ratio, self.multiple, self.max_pixels
            )
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


def _grid_stride(net: torch.nn.Module, features: Sequence[str], device: torch.device) -> int:
    """Image pixels per cell of the bootstrap map (the stride of ``features``' fused grid),
    measured on a blank canvas (in eval mode: BN statistics untouched), so any backbone and
    dilation is right."""
    size = 2 * _SIZE_DIVISIBILITY
    x = torch.zeros(1, 3, size, size, device=device)
    was_training = net.training
    net.eval()
    try:
        h, w = extract_bootstrap_features(net, x, list(features)).shape[-2:]
    finally:
        net.train(was_training)
    if h != w or size % h:
        raise RuntimeError(
            f"bootstrap features {list(features)} of a {size}x{size} image are {h}x{w}: "
            f"expected a square grid whose stride divides {size}"
        )
    return size // h


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bootstrap_round(
    model: torch.nn.Module,
    settings: RoundSettings,
    dataset_dicts: Sequence[dict],
    store: MaskStore,
    round_id: int,
    *,
    epoch: int = -1,
    iteration: int = -1,
    kmeans: Callable | None = None,
    replace_current: bool = False,
) -> dict[str, Any]:
    """Bootstrap every image of ``dataset_dicts`` into round ``round_id`` of ``store`` in this
    process, then finish the round (manifest, ``current`` pointer).

    Begins the round first. Rewriting the current round raises unless ``replace_current``:
    then ``current`` points at no round until the new one is finished (readers of a live store,
    e.g. a training run, meanwhile see none), which is why it is the caller's decision. ``epoch`` / ``iteration`` are recorded
    in the manifest (-1: not from a training run). ``kmeans`` as in :func:`bootstrap_shard`.

    Returns:
        the stats of :func:`bootstrap_shard` plus "manifest" (what :func:`round_manifest`
        and ``MaskStore.finish_round`` wrote).
    """
    # before begin_round may drop the current round (BootstrapHook checks its data sets once)
    check_unique_image_ids(dataset_dicts)
    store.begin_round(round_id, replace_current=replace_current)
    stats = bootstrap_shard(
        model, settings, dataset_dicts, store, round_id, iteration=iteration, kmeans=kmeans
    )
    manifest = round_manifest([stats], settings, epoch=epoch, iteration=iteration)
    stats["manifest"] = store.finish_round(round_id, manifest)
    return stats


@dataclasses.dataclass
class _Tally:
    """What a shard has done so far (seconds per phase, output, K per group, bad images)."""

    forward_s: float = 0.0
    kmeans_s: float = 0.0
    write_s: float = 0.0
    bytes: int = 0
    k_values: list[int] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)


def bootstrap_shard(
    model: torch.nn.Module,
    settings: RoundSettings,
    dataset_dicts: Sequence[dict],
    store: MaskStore,
    round_id: int,
    *,
    iteration: int = -1,
    world_size: int = 1,
    rank: int = 0,
    kmeans: Callable | None = None,
) -> dict[str, Any]:
    """Write this rank's shard of round ``round_id`` into ``store`` (module docstring). The
    round must have been begun (``store.begin_round``); finishing it is the caller's, and so
    is refusing ids that share a mask key (``check_unique_image_ids``).

    ``settings.border_pad`` mirrors each image that far outwards before the forward and crops
    the features back to the image: the backbone's zero padding then falls on the mirrored
    frame, so the image's own border locations do not form a "border" cluster of their own
    (stride-2 convolutions pad asymmetrically, which makes the top row and left column of a
    zero-padded map stand apart). ``kmeans(x, k, iters=, seed=, backend=)`` defaults to
    ``cyborgs.clustering.spherical_kmeans``. Images the reader refuses are skipped, named and
    counted. ``iteration`` only names the training step in a non-finite error.

    Returns stats: round, features, images (label maps written), skipped_images,
    skipped_files ("file: reason" each), time_s, images_per_s, forward_s, forward_share
    (backbone forward time / total), kmeans_s, write_s (the rest is image loading and
    padding), k_values (K per group, after the cap), bytes, bytes_per_image, cell_grid
    (``cyborgs.masks.cell_grid.cell_grid_record`` of the measured receptive-field centre).
    """
    s = settings
    if kmeans is None:
        from cyborgs.clustering import spherical_kmeans as kmeans
    t_start = time.perf_counter()
    net = model.module if hasattr(model, "module") else model
    tally = _Tally()
    encoder = _Encoder(net, s, tally)
    indices = shard_indices(len(dataset_dicts), round_id, s.seed, world_size, rank)
    images = _good_images(_image_loader(dataset_dicts, indices, s, encoder.stride), round_id, tally)
    # Images stored so far, with rate and ETA, per rank (the summary line below ends it).
    progress = Progress(len(indices), f"bootstrap round {round_id} (rank {rank}/{world_size})",
                        logger)  # fmt: skip

    # The procedure (paper §3.3, METHOD.md §3): unit-norm features of each image, grouped; per
    # group K ~ U{K_MIN..K_MAX}, joint spherical k-means, every location to its nearest
    # prototype; the label maps stored.
    with _eval_mode(net), _closing(progress):
        for g, group in enumerate(_groups(encoder.encode(images, s.batch_size), s.group_size)):
            t0 = time.perf_counter()
            x = torch.cat([f.flatten(1).T for _, _, f in group])  # the group's locations [N, D]
            _check_finite_group(x, group, round_id, iteration)
            rng = np.random.default_rng([int(s.seed), int(round_id), int(rank), g])
            centroids, labels = _cluster_group(x, rng, s, kmeans)
            tally.k_values.append(int(centroids.shape[0]))
            _sync(x.device)
            t1 = time.perf_counter()
            tally.kmeans_s += t1 - t0
            tally.bytes += _store_group(store, round_id, group, labels, centroids, s.crf,
                                        encoder.cell_grid["centre"])  # fmt: skip
            tally.write_s += time.perf_counter() - t1
            progress.update(len(group))
            preemption.check()  # a stop request: the resume redoes the whole round

    stats = _shard_stats(tally, round_id, s, len(indices), time.perf_counter() - t_start,
                         encoder.cell_grid)  # fmt: skip
    _log_shard(stats, round_id, rank, world_size)
    return stats


def _cluster_group(
    x: torch.Tensor, rng: np.random.Generator, s: RoundSettings, kmeans: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes [K, D] of a group's unit-norm locations ``x`` [N, D] and each location's
    label: K ~ U{k_min..k_max} from ``rng`` (capped at N), spherical k-means seeded from
    ``rng``, then the nearest prototype (max cosine), explicitly, whatever the backend."""
    k = min(int(rng.integers(s.k_min, s.k_max + 1)), x.shape[0])
    seed = int(rng.integers(2**31 - 1))
    centroids, _ = kmeans(x, k, iters=s.kmeans_iters, seed=seed, backend=s.backend)
    centroids = F.normalize(centroids.float().to(x.device), dim=1)
    return centroids, (x @ centroids.T).argmax(dim=1)


def _store_group(
    store: MaskStore,
    round_id: int,
    group: Sequence[tuple[Any, np.ndarray, torch.Tensor]],
    labels: torch.Tensor,
    centroids: torch.Tensor,
    crf: bool,
    cell_centre: float,
) -> int:
    """Each image's slice of the group's ``labels`` as its label map (CRF-refined if ``crf``),
    ids compacted, written to ``store``; returns the bytes written."""
    if crf:
        from .crf import crf_refine_to_grid
    written, start = 0, 0
    for image_id, im, f in group:
        h, w = f.shape[-2:]
        lm = labels[start : start + h * w].view(h, w)
        start += h * w
        if crf:
            lm = crf_refine_to_grid(im, f, centroids, lm, cell_centre)
        written += store.write(
            round_id, image_id, compact_labels(lm.cpu().numpy().astype(np.uint8))
        )
    return written


class _Encoder:
    """The online backbone as a round uses it: images in, each image's unit-norm feature map
    [D, h, w] out (cropped to the image, mirrored frame removed). Measures, once, the map's
    stride and where its cells sit (``cell_grid``, for the manifest); adds forward seconds
    to the tally."""

    def __init__(self, net: torch.nn.Module, s: RoundSettings, tally: _Tally) -> None:
        self.net, self.tally = net, tally
        self.features, self.border_pad = list(s.features), s.border_pad
        self.device = next(net.parameters()).device
        pixel_mean = getattr(net, "pixel_mean", None)
        self.pad_value = (
            pixel_mean.detach().float().flatten().cpu()
            if isinstance(pixel_mean, torch.Tensor) and pixel_mean.numel() == 3
            else torch.zeros(3)
        )
        self.stride = _grid_stride(net, s.features, self.device)
        # Where each cell looks on the resized image: the manifest records it, so every consumer
        # puts the stored map on the pixels its features came from (cyborgs.masks.cell_grid).
        rf_stride, rf_offset = measure_cell_grid(net, s.features, self.device)
        if rf_stride != self.stride:
            raise RuntimeError(
                f"bootstrap features {self.features}: stride {self.stride} on a blank canvas "
                f"but {rf_stride} from the receptive field"
            )
        self.cell_grid = cell_grid_record(self.stride, rf_offset)
        if s.border_pad % self.stride:
            raise ValueError(
                f"CYBORGS.BOOTSTRAP.BORDER_PAD={s.border_pad} is not a multiple of the bootstrap "
                f"feature stride {self.stride} of {self.features}"
            )

    def encode(self, images, batch_size: int):
        """``(image_id, image, feats)`` of every ``(image_id, image)``, a batch of
        ``batch_size`` at a time (each batch split into forwards of bounded canvas, order
        kept); yields one list per batch."""
        batch: list[tuple[Any, np.ndarray]] = []
        for item in images:
            batch.append(item)
            if len(batch) == batch_size:
                yield self._encode_batch(batch)
                batch = []
        if batch:
            yield self._encode_batch(batch)

    def _encode_batch(self, batch: list[tuple[Any, np.ndarray]]) -> list:
        pad2 = 2 * self.border_pad
        shapes = [(im.shape[0] + pad2, im.shape[1] + pad2) for _, im in batch]
        out: list = []
        for chunk in _canvas_chunks(shapes):
            out += self._forward([batch[i] for i in chunk])
        return out

    def _forward(self, part: list[tuple[Any, np.ndarray]]) -> list:
        x = _pad_batch([im for _, im in part], self.pad_value, self.device, self.border_pad)
        _sync(self.device)
        t0 = time.perf_counter()
        feats = extract_bootstrap_features(self.net, x, self.features)
        _sync(self.device)
        self.tally.forward_s += time.perf_counter() - t0
        stride = self.stride
        if tuple(feats.shape[-2:]) != (x.shape[-2] // stride, x.shape[-1] // stride):
            raise RuntimeError(
                f"bootstrap features {self.features} of a {tuple(x.shape[-2:])} canvas are "
                f"{tuple(feats.shape[-2:])}, not the canvas / {stride} the round measured"
            )
        o = self.border_pad // stride
        out = []
        for (image_id, im), f in zip(part, feats, strict=True):
            fh, fw = im.shape[0] // stride, im.shape[1] // stride  # exact: sides are multiples
            out.append((image_id, im, f[:, o : o + fh, o : o + fw]))
        return out


def _image_loader(
    dataset_dicts: Sequence[dict], indices: np.ndarray, s: RoundSettings, multiple: int
) -> torch.utils.data.DataLoader:
    """``(image_id, image or None, reason or None)`` of the shard's images, in order."""
    return torch.utils.data.DataLoader(
        _ImageList(
            dataset_dicts, indices, s.input_size, s.max_aspect_ratio, multiple, s.max_pixels
        ),  # fmt: skip
        batch_size=None,
        collate_fn=_identity,  # keep numpy images (the default converts them to tensors)
        num_workers=s.num_workers,
        prefetch_factor=4 if s.num_workers > 0 else None,
    )


def _good_images(loader, round_id: int, tally: _Tally):
    """``(image_id, image)`` of the images the reader accepts; the others are named in a
    warning and tallied."""
    for image_id, im, reason in loader:
        if im is None:
            logger.warning(f"bootstrap round {round_id}: skipping bad image {reason}")
            tally.skipped.append(reason)
            continue
        yield image_id, im


def _groups(batches, group_size: int):
    """Consecutive groups of ``group_size`` items (the last may be smaller) from lists of
    items; a group is formed as soon as a list completes it."""
    pending: list = []
    for items in batches:
        pending += items
        while len(pending) >= group_size:
            yield pending[:group_size]
            del pending[:group_size]
    while pending:
        yield pending[:group_size]
        del pending[:group_size]


@contextlib.contextmanager
def _eval_mode(net: torch.nn.Module):
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


@contextlib.contextmanager
def _closing(progress: Progress):
    try:
        yield
    finally:
        progress.close(summary=False)


def _shard_stats(
    tally: _Tally, round_id: int, s: RoundSettings, num_images: int, total: float, cell_grid
) -> dict[str, Any]:
    """The stats :func:`bootstrap_shard` returns (see there)."""
    n = num_images - len(tally.skipped)
    return {
        "round": int(round_id),
        "features": list(s.features),
        "images": n,
        "skipped_images": len(tally.skipped),
        "skipped_files": tally.skipped,
        "time_s": total,
        "images_per_s": n / total if total > 0 else 0.0,
        "forward_s": tally.forward_s,
        "forward_share": tally.forward_s / total if total > 0 else 0.0,
        "kmeans_s": tally.kmeans_s,  # clustering + assignment
        "write_s": tally.write_s,  # (CRF,) relabel, PNG encode, atomic write
        "k_values": tally.k_values,
        "bytes": tally.bytes,
        "bytes_per_image": tally.bytes / max(n, 1),
        "cell_grid": cell_grid,
    }


def _log_shard(stats: dict[str, Any], round_id: int, rank: int, world_size: int) -> None:
    skipped, k_values = stats["skipped_files"], stats["k_values"]
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
        stats["images"],
        stats["time_s"],
        stats["images_per_s"],
        100 * stats["forward_share"],
        float(np.mean(k_values)) if k_values else 0.0,
        stats["bytes_per_image"],
    )


def _check_finite_group(x: torch.Tensor, items: Sequence, round_id: int, iteration: int) -> None:
    """Non-finite features would crash k-means++ ("invalid multinomial distribution"): stop
    with the engine's non-finite message instead (the hook adds the last good checkpoint)."""
    if bool(torch.isfinite(x).all()):
        return
    from cyborgs.utils.nonfinite import NonFiniteLossError

    bad = [str(image_id) for image_id, _, f in items if not bool(torch.isfinite(f).all())]
    raise NonFiniteLossError(
        f"Non-finite bootstrap features in round {round_id} at iteration {iteration}: the "
        f"online encoder gives NaN/inf for {len(bad)} of {len(items)} images of a group "
        f"(image ids {bad[:5]}), so the weights have diverged",
        iteration,
    )


def round_manifest(
    rank_stats: Sequence[dict],
    settings: RoundSettings,
    *,
    epoch: int,
    iteration: int,
) -> dict[str, Any]:
    """The manifest fields of a bootstrapped round, the same for the hook and the offline tool,
    from every rank's stats (:func:`bootstrap_shard`) and the round's settings.

    Keys: epoch, iteration (-1: not from a training run), features, source ("bootstrap"),
    k_per_group, k_histogram ({"K": groups}), k_mean, time_s (slowest rank), world_size,
    skipped_images (count) and skipped_files (at most ``MAX_LISTED_SKIPPED``), settings
    (:meth:`RoundSettings.manifest_fields`), cell_grid (where each cell of the maps sits on
    its image: ``cyborgs.masks.cell_grid``). ``MaskStore.finish_round`` adds round, created,
    num_images, bytes and bytes_per_image.
    """
    k_values = [k for s in rank_stats for k in s["k_values"]]
    skipped = [f for s in rank_stats for f in s.get("skipped_files", [])]
    grids = [s["cell_grid"] for s in rank_stats if "cell_grid" in s]
    if any(g != grids[0] for g in grids):
        raise RuntimeError(f"ranks measured different cell grids for one round: {grids}")
    return {
        "epoch": int(epoch),
        "iteration": int(iteration),
        "features": list(settings.features),
        "source": "bootstrap",
        "k_per_group": k_values,
        "k_histogram": {str(k): c for k, c in sorted(Counter(k_values).items())},
        "k_mean": float(np.mean(k_values)) if k_values else 0.0,
        "time_s": max((s["time_s"] for s in rank_stats), default=0.0),
        "world_size": len(rank_stats),
        "skipped_images": sum(int(s.get("skipped_images", 0)) for s in rank_stats),
        "skipped_files": skipped[:MAX_LISTED_SKIPPED],
        "settings": settings.manifest_fields(),
        **({"cell_grid": grids[0]} if grids else {}),
    }
