"""The one image reader of the suite: validate, orient and normalise to RGB uint8, or refuse.

Every pretraining image (two-view mapper, bootstrap rounds, fixed-mask precompute, image-size
headers at registration) is read here, so "bad image" means one thing everywhere and every
consumer skips the same files. :func:`read_image` returns ``np.ndarray[H, W, 3]`` uint8 RGB or
raises :class:`BadImageError` (``path``, ``reason``) for:

* a missing, empty (0 bytes) or non-image file, or one PIL cannot decode;
* anything but a regular file (a FIFO, device or socket named ``*.jpg``): never opened, since
  reading a FIFO without a writer blocks forever (a non-blocking open plus ``fstat`` closes the
  window between the check and the open);
* more pixels (width x height, from the header, before decoding) than ``max_pixels``
  (``CYBORGS.DATA.MAX_IMAGE_PIXELS``, default :data:`DEFAULT_MAX_IMAGE_PIXELS`; 0 disables
  the check): a 17.5 KB 1-bit PNG of 12000x12000 decodes to 1.8 GB, under PIL's own
  decompression-bomb limit;
* a truncated file: PIL decodes lazily and raises "image file is truncated" only when the
  pixels are loaded, so the pixels are loaded here, in full;
* a zero-size image (width or height 0);
* an aspect ratio (longer / shorter side) above ``max_aspect_ratio``
  (``CYBORGS.DATA.MAX_ASPECT_RATIO``, default 10; 0 disables the check): a 4000x20 strip
  resized to a 224-px shorter side is 44800 px long, more memory than a whole batch of normal
  images, and too thin for any crop or mask to mean anything;
* pixel types with no sensible 8-bit meaning: floating-point ("F") images, and 32-bit integer
  ("I") images whose values leave the 16-bit range.

Normalisation:

* 16-bit greyscale (PIL "I;16", "I;16B", "I;16L", and "I" holding 16-bit samples, as PNG and
  TIFF decode) is scaled to 8 bits, ``round(v * 255 / 65535)``: PIL's own ``convert("RGB")``
  clips every value above 255 to white. (16-bit RGB PNGs already decode to 8-bit "RGB".)
* Palette ("P", "PA"), grey ("L", "1", "LA"), "CMYK", "YCbCr", "RGBA", ... become RGB with
  ``Image.convert``; alpha is dropped (the stored colour is kept), as detectron2's
  ``read_image`` does, so pretraining and transfer see the same pixels.
* EXIF orientation is applied, exactly like detectron2's ``read_image``
  (``detection_utils._apply_exif_orientation``), so masks and sizes agree with what the
  transfer pipeline reads. Mask stores and label maps are produced from these oriented pixels
  (the mask sources see this function's output), so they are consistent by construction.
  COCO's convention is that annotations refer to the *stored* pixel grid; for an image with an
  EXIF rotation the ground-truth oracle therefore inherits detectron2's own behaviour (the
  annotation grid and the oriented image disagree). COCO itself has no rotated images.
  :func:`read_image_size` reports the oriented size too (width and height swapped for EXIF
  orientations 5-8), so dataset dicts match the arrays.

:func:`read_image_tensor` (the two-view mapper's reader) returns the same pixels after the same
checks as a ``uint8 [3, H, W]`` tensor, faster: the file is read once, PIL parses the header
(format, mode, size, EXIF) and a baseline or progressive 8-bit 3-component JPEG with no EXIF
rotation (COCO's images) is decoded by libjpeg-turbo through ``torchvision.io.decode_jpeg``
straight into the tensor, skipping PIL's decode-then-copy (measured on 640x480 quality-90
JPEGs: about 2.3 ms of CPU instead of 3-4 ms for :func:`read_image`; ``benchmarks/dataloader.py``
reports both). Both decoders are libjpeg-turbo with its default accurate integer DCT and fancy
upsampling, so the pixels are the same (``tests/data/test_image_io.py`` compares them); a
truncated JPEG makes ``decode_jpeg`` raise, which is refused like PIL's "image file is
truncated". Every other file (PNG, grey or CMYK JPEG, EXIF-rotated JPEG, ...) takes the
:func:`read_image` route. No reduced-scale (DCT draft) decoding: see ``benchmarks/dataloader.py``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# The config's defaults are the readers' defaults.
from cyborgs.config import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "BadImageError",
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "check_aspect_ratio",
    "check_pixels",
    "check_regular_file",
    "display_path",
    "file_kind",
    "read_image",
    "read_image_size",
    "read_image_tensor",
]

# At most this many skipped files are listed in a manifest (rounds, precomputed sources); the
# count is always complete.
MAX_LISTED_SKIPPED = 1000

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I")


def display_path(path: str) -> str:
    """``path`` for messages: bytes that are not UTF-8 (kept by the OS as surrogate escapes in
    ``str`` paths) shown as U+FFFD, so that logging and printing never fail on a file name."""
    try:
        os.fspath(path).encode("utf-8")
        return os.fspath(path)
    except UnicodeEncodeError:
        raw = os.fspath(path).encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "replace")


class BadImageError(ValueError):
    """An image that cannot be used: ``path`` and a human-readable ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{display_path(path)}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader workers
        return type(self), (self.path, self.reason)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages ("a FIFO (named pipe)", "a socket", ...)."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed) of a regular file, else :class:`BadImageError`
    (missing, or a FIFO / device / socket / directory, named as such)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadImageError(path, f"cannot access the file ({_describe(e)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadImageError(path, f"{file_kind(st.st_mode)}, not a regular file: not opened")
    return st


def _open_regular(path: str):
    """A binary file object of ``path``, which must be a regular file: checked before opening,
    opened non-blocking (a FIFO swapped in meanwhile does not block) and checked again."""
    check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise BadImageError(path, f"cannot access the file ({_describe(e)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImageError(path, f"{file_kind(st.st_mode)}, not a regular file: not opened")
        if st.st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _open(path: str) -> Iterator[Image.Image]:
    """``path`` opened with PIL (a regular file only), with clear "missing" / "empty" / "not a
    regular file" reasons; the image and the file are closed on exit."""
    with _open_regular(path) as f:
        try:
            im = Image.open(f)
        except UnidentifiedImageError:  # its message names the file object, not the file
            raise BadImageError(path, "not a readable image (no image format recognised)") from None
        except Exception as e:  # a decoder's failure on hostile bytes is the file's fault
            raise BadImageError(path, f"not a readable image ({_describe(e)})") from None
        with im:
            yield im


def _read_bytes(path: str) -> bytearray:
    """The file's bytes (writable, for ``torch.frombuffer``), with :func:`_open`'s reasons."""
    f = _open_regular(path)
    try:
        with f:
            size = os.fstat(f.fileno()).st_size
            data = bytearray(size)
            n = f.readinto(data)
    except OSError as e:
        raise BadImageError(path, f"cannot access the file ({_describe(e)})") from None
    return data[:n] if n != size else data


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a corrupt EXIF block: detectron2 ignores it too
        return None


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def check_aspect_ratio(path: str, width: int, height: int, max_aspect_ratio: float) -> None:
    """Raise :class:`BadImageError` for a zero-size image or one whose longer / shorter side
    exceeds ``max_aspect_ratio`` (<= 0: no limit)."""
    if width < 1 or height < 1:
        raise BadImageError(path, f"zero-size image ({width}x{height})")
    ratio = max(width, height) / min(width, height)
    if max_aspect_ratio > 0 and ratio > max_aspect_ratio:
        raise BadImageError(
            path,
            f"aspect ratio {ratio:.1f} ({width}x{height}) exceeds "
            f"CYBORGS.DATA.MAX_ASPECT_RATIO={max_aspect_ratio:g}",
        )


def check_pixels(path: str, width: int, height: int, max_pixels: int) -> None:
    """Raise :class:`BadImageError` for an image of more than ``max_pixels`` pixels (<= 0: no
    limit), from the header's size, before anything is decoded."""
    if max_pixels > 0 and width * height > max_pixels:
        raise BadImageError(
            path,
            f"{width}x{height} = {width * height} pixels exceeds "
            f"CYBORGS.DATA.MAX_IMAGE_PIXELS={max_pixels} (not decoded)",
        )


def read_image_size(path: str, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of the image as :func:`read_image` returns it (EXIF orientation
    applied), from the header only (fast; a truncated body is found only by ``read_image``).
    An image above ``max_pixels`` is refused before its EXIF block is looked up: PIL decodes a
    whole PNG to find one (``PngImageFile.getexif``)."""
    with _open(path) as im:
        check_pixels(path, *im.size, max_pixels)
        try:
            w, h = _oriented_size(im)
        except Exception as e:
            raise BadImageError(path, f"unreadable header ({_describe(e)})") from None
    if w < 1 or h < 1:
        raise BadImageError(path, f"zero-size image ({w}x{h})")
    return int(w), int(h)


def _sixteen_bit_to_rgb(path: str, im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if a.ndim != 2:
        raise BadImageError(path, f"unexpected array shape {a.shape} for PIL mode {im.mode!r}")
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise BadImageError(
            path, f"integer image (mode {im.mode!r}) with values {lo}..{hi} outside 0..65535"
        )
    a8 = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(a8[:, :, None], 3, axis=2)


def _to_rgb(path: str, im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(path, im)
    if mode == "F":
        raise BadImageError(path, "floating-point image (PIL mode 'F'): no 8-bit meaning")
    if mode == "P" and "transparency" in im.info or mode == "PA":
        im = im.convert("RGBA")  # PIL asks palette transparency to go through RGBA
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _decode_pil(path: str, im: Image.Image, max_aspect_ratio: float, max_pixels: int) -> np.ndarray:
    """Check, decode in full, orient and normalise an opened image (``read_image``'s body)."""
    try:
        check_pixels(path, *im.size, max_pixels)  # before _orientation: PNG's decodes in full
        orientation = _orientation(im)
        w, h = im.size
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        check_aspect_ratio(path, w, h, max_aspect_ratio)  # before decoding a huge strip
        im.load()  # decode in full: a truncated file fails here, not later
        if orientation in (2, 3, 4, 5, 6, 7, 8):  # 1 / none: exif_transpose would only copy
            im = ImageOps.exif_transpose(im) or im
        arr = _to_rgb(path, im)
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(path, f"cannot decode the image ({_describe(e)})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise BadImageError(path, f"unusable decoded shape {arr.shape}")
    return arr


def read_image(
    path: str,
    *,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """The image at ``path`` as a writable RGB uint8 array ``[H, W, 3]`` (see the module
    docstring for what is validated and normalised), or :class:`BadImageError`."""
    path = os.fspath(path)
    with _open(path) as im:
        arr = _decode_pil(path, im, max_aspect_ratio, max_pixels)
    return np.array(arr, dtype=np.uint8, order="C")  # own, writable memory


def _jpeg_decoder():
    """``decode(bytes_tensor) -> uint8 [3, H, W]``: torchvision's libjpeg-turbo JPEG decoder
    (its registered op, as ``torchvision.io.decode_jpeg(data, mode=RGB)`` calls it, without
    that wrapper's per-call deprecation warning and usage logging), or None where torchvision's
    image extension is unavailable (then every file takes the PIL route)."""
    global _DECODE_JPEG
    if _DECODE_JPEG is None:
        try:
            from torchvision.io import image as tv_image

            if not tv_image._has_image_ops():
                raise RuntimeError("torchvision built without its image extension")
            op, rgb = torch.ops.image.decode_jpeg, tv_image.ImageReadMode.RGB.value
            decode = functools.partial(op, mode=rgb, apply_exif_orientation=False)
            _check_decoder(decode)
            _DECODE_JPEG = decode
        except Exception:  # no image extension, or an op that changed in another torchvision:
            _DECODE_JPEG = False  # PIL for every file rather than every JPEG refused as bad
    return _DECODE_JPEG or None


_DECODE_JPEG = None


def _check_decoder(decode) -> None:
    """Decode a small known JPEG once and compare with PIL: a decoder op whose signature or
    output changed must not make every image look corrupt."""
    rng = np.random.default_rng(0)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), 4, 0), 4, 1)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    got = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if tuple(got.shape) != (3, 16, 24) or got.dtype != torch.uint8:
        raise RuntimeError(f"decoder returned {got.dtype} {tuple(got.shape)}")
    if np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int)).max() > 2:
        raise RuntimeError("decoder pixels differ from PIL's")


def read_image_tensor(
    path: str,
    *,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """:func:`read_image`'s pixels and checks as ``uint8 [3, H, W]`` (RGB), a view of HWC
    memory (``permute(1, 2, 0)`` gives the ``[H, W, 3]`` array back without a copy).

    JPEGs that need no conversion (8-bit 3-component, no EXIF rotation) are decoded by
    libjpeg-turbo through ``torchvision.io.decode_jpeg`` from the bytes already read; every
    other file goes through :func:`read_image`'s PIL route (module docstring)."""
    path = os.fspath(path)
    data = _read_bytes(path)
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # a decoder's failure on hostile bytes is the file's fault
        raise BadImageError(path, f"not a readable image ({_describe(e)})") from None
    with im:
        check_pixels(path, *im.size, max_pixels)
        decoder = _jpeg_decoder() if im.format == "JPEG" and im.mode == "RGB" else None
        if decoder is not None and _orientation(im) in (None, 1):
            w, h = im.size
            check_aspect_ratio(path, w, h, max_aspect_ratio)
            try:
                t = decoder(torch.frombuffer(data, dtype=torch.uint8))
            except Exception as e:  # truncated or corrupt: refused like PIL's decode
                raise BadImageError(path, f"cannot decode the image ({_describe(e)})") from None
            if tuple(t.shape) != (3, h, w):
                raise BadImageError(
                    path, f"decoded shape {tuple(t.shape)} differs from the header's {(3, h, w)}"
                )
            return t
        arr = _decode_pil(path, im, max_aspect_ratio, max_pixels)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).permute(2, 0, 1)
