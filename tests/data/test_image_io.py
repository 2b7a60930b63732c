"""read_image / read_image_size: every kind of bad image refused with BadImageError naming the
file; odd pixel formats normalised to RGB uint8 (expected values from the formats' definitions).
read_image_tensor (the mapper's fast reader) refuses the same files for the same reasons and
returns the same pixels."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.data import image_io
from cyborgs.data.image_io import (
    DEFAULT_MAX_ASPECT_RATIO,
    BadImageError,
    read_image,
    read_image_size,
    read_image_tensor,
)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bad(path, match: str) -> BadImageError:
    """Both readers refuse ``path`` with a reason matching ``match``."""
    with pytest.raises(BadImageError, match=match) as fast:
        read_image_tensor(str(path))
    assert fast.value.path == str(path) and str(path) in str(fast.value)
    with pytest.raises(BadImageError, match=match) as info:
        read_image(str(path))
    assert info.value.path == str(path) and str(path) in str(info.value)
    return info.value


def test_missing_empty_and_non_image_files(tmp_path):
    _bad(tmp_path / "missing.jpg", "cannot access")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _bad(tmp_path / "empty.jpg", "empty file")
    (tmp_path / "text.jpg").write_bytes(b"hello, not an image\n" * 10)
    _bad(tmp_path / "text.jpg", "not a readable image")
    for name in ("missing.jpg", "empty.jpg", "text.jpg"):
        with pytest.raises(BadImageError):
            read_image_size(str(tmp_path / name))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_refused_not_half_decoded(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_noise(128, 128)).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert read_image_size(str(path)) == (128, 128)  # the header is intact
    _bad(path, "truncated|cannot decode")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("cut", ["half", "no_eoi"])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_refused_by_the_fast_decoder_too(tmp_path, cut, progressive):
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 80)).save(buf, format="JPEG", quality=90, progressive=progressive)
    data = buf.getvalue()
    assert data.endswith(b"\xff\xd9")  # EOI
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-2])
    _bad(path, "truncated|cannot decode")


def _jpeg(path, a: np.ndarray, **kw) -> None:
    Image.fromarray(a).save(path, format="JPEG", **kw)


def test_tensor_reader_matches_read_image_and_takes_the_fast_route_for_plain_jpegs(
    tmp_path, monkeypatch
):
    a = _noise(48, 64, seed=3)
    smooth = np.asarray(Image.fromarray(a).resize((64, 48), Image.BILINEAR))  # a JPEG-like
    plain = {
        "q90_420.jpg": dict(quality=90),
        "q95_444.jpg": dict(quality=95, subsampling=0),
        "q75_422.jpg": dict(quality=75, subsampling=1),
        "progressive.jpg": dict(quality=90, progressive=True),
        "odd_size.jpg": dict(quality=90),
    }
    for name, kw in plain.items():
        img = smooth[:47, :61] if name == "odd_size.jpg" else smooth
        _jpeg(tmp_path / name, img, **kw)
    exif = Image.Exif()
    exif[0x0112] = 6
    _jpeg(tmp_path / "rotated.jpg", smooth, quality=90, exif=exif.tobytes())
    Image.fromarray(smooth[:, :, 0]).save(tmp_path / "grey.jpg", quality=90)
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    Image.fromarray(a).save(tmp_path / "plain.png")
    pil_route = []
    decode_pil = image_io._decode_pil

    def spy(path, im, max_aspect_ratio, max_pixels):
        pil_route.append(os.path.basename(path))
        return decode_pil(path, im, max_aspect_ratio, max_pixels)

    for f in sorted(os.listdir(tmp_path)):
        path = str(tmp_path / f)
        with monkeypatch.context() as m:
            m.setattr(image_io, "_decode_pil", spy)
            t = read_image_tensor(path)
        ref = read_image(path)
        assert t.dtype == torch.uint8 and t.shape == (3, *ref.shape[:2]), f
        hwc = t.permute(1, 2, 0)
        assert hwc.is_contiguous(), f  # HWC memory: the array view needs no copy
        # same libjpeg-turbo decode (accurate DCT, fancy upsampling) as PIL's: same pixels
        assert np.array_equal(hwc.numpy(), ref), f
    assert read_image_tensor(str(tmp_path / "rotated.jpg")).shape == (3, 64, 48)
    if image_io._jpeg_decoder() is not None:
        fast = set(os.listdir(tmp_path)) - set(pil_route)
        assert fast == set(plain), (fast, pil_route)


def test_fast_route_checks_the_aspect_ratio_before_decoding(tmp_path):
    _jpeg(tmp_path / "strip.jpg", _noise(16, 400), quality=90)
    e = _bad(tmp_path / "strip.jpg", "MAX_ASPECT_RATIO")
    assert "400x16" in e.reason
    assert read_image_tensor(str(tmp_path / "strip.jpg"), max_aspect_ratio=0).shape == (3, 16, 400)


def test_zero_size_image(tmp_path):
    # a PNG whose header says 0 x 5 pixels (PIL may refuse it on open or report size 0)
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    (tmp_path / "zero.png").write_bytes(data)
    _bad(tmp_path / "zero.png", "zero-size|not a readable")


def test_extreme_aspect_ratio_beyond_the_limit(tmp_path):
    Image.fromarray(_noise(20, 400)).save(tmp_path / "strip.png")
    e = _bad(tmp_path / "strip.png", "MAX_ASPECT_RATIO")
    assert "400x20" in e.reason
    assert read_image(str(tmp_path / "strip.png"), max_aspect_ratio=0).shape == (20, 400, 3)
    assert read_image(str(tmp_path / "strip.png"), max_aspect_ratio=20).shape == (20, 400, 3)
    Image.fromarray(_noise(400, 41)).save(tmp_path / "tall.png")  # 9.76 <= 10
    assert read_image(str(tmp_path / "tall.png")).shape == (400, 41, 3)


def test_config_default_is_the_reader_default():
    from detectron2.config import get_cfg

    cfg = add_cyborgs_config(get_cfg())
    assert cfg.CYBORGS.DATA.MAX_ASPECT_RATIO == DEFAULT_MAX_ASPECT_RATIO == 10


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    # 16-bit samples v map to round(v * 255 / 65535); v = 257 * k maps exactly to k
    levels = np.array([[0, 257 * 1, 257 * 100, 257 * 200, 65535]], np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really decoded as 16 bit
    out = read_image(str(tmp_path / "g16.png"), max_aspect_ratio=0)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
    assert out[0, :, 0].tolist() == [0, 1, 100, 200, 255]
    assert (out == out[:, :, :1]).all()  # grey in all three channels


def test_sixteen_bit_tiff_big_endian(tmp_path):
    a = np.full((4, 4), 257 * 60, np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.tif")
    assert (read_image(str(tmp_path / "g16.tif")) == 60).all()


def test_float_image_is_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    _bad(tmp_path / "f.tif", "floating-point")


def test_cmyk_rgba_la_palette_become_rgb(tmp_path):
    # CMYK (0, 255, 255, 0) is red; lossless TIFF keeps it exact
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    out = read_image(str(tmp_path / "cmyk.tif"))
    assert out.shape == (3, 4, 3) and (out == [255, 0, 0]).all()
    # alpha is dropped, the stored colour kept (as detectron2's reader does)
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert (read_image(str(tmp_path / "rgba.png")) == [10, 20, 30]).all()
    Image.new("LA", (4, 3), (77, 128)).save(tmp_path / "la.png")
    assert (read_image(str(tmp_path / "la.png")) == 77).all()
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert (read_image(str(tmp_path / "p.png")) == [12, 34, 56]).all()
    Image.new("1", (4, 3), 1).save(tmp_path / "bw.png")
    assert (read_image(str(tmp_path / "bw.png")) == 255).all()


def test_exif_orientation_applied_like_detectron2(tmp_path):
    from detectron2.data.detection_utils import read_image as d2_read_image

    stored = _noise(30, 50)  # stored 50 wide, 30 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif.tobytes())
    out = read_image(str(tmp_path / "rot.png"))
    assert out.shape == (50, 30, 3)  # displayed upright: 30 wide, 50 high
    assert np.array_equal(out, np.rot90(stored, k=-1))  # 90 degrees clockwise
    assert np.array_equal(out, d2_read_image(str(tmp_path / "rot.png"), format="RGB"))
    assert read_image_size(str(tmp_path / "rot.png")) == (30, 50)  # (width, height) as read


def test_plain_rgb_round_trip_and_writable(tmp_path):
    a = _noise(7, 9)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = read_image(str(tmp_path / "a.png"))
    assert np.array_equal(out, a) and out.flags.writeable and out.flags.c_contiguous
    assert read_image_size(str(tmp_path / "a.png")) == (9, 7)


def test_error_pickles_for_loader_workers(tmp_path):
    e = pickle.loads(pickle.dumps(BadImageError("/x/y.jpg", "empty file (0 bytes)")))
    assert isinstance(e, BadImageError) and e.path == "/x/y.jpg" and "0 bytes" in str(e)


def test_a_broken_jpeg_decoder_falls_back_to_pil_instead_of_refusing_every_jpeg(
    tmp_path, monkeypatch
) -> None:
    path = str(tmp_path / "plain.jpg")
    pixels = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    want = np.asarray(Image.open(path).convert("RGB"))

    def wrong_output(data):  # e.g. an op whose output layout changed in another torchvision
        return torch.zeros(16, 24, 3, dtype=torch.uint8)

    with pytest.raises(RuntimeError, match="decoder returned"):
        image_io._check_decoder(wrong_output)
    monkeypatch.setattr(image_io, "_DECODE_JPEG", None)
    check = image_io._check_decoder
    monkeypatch.setattr(image_io, "_check_decoder", lambda decode: check(wrong_output))
    assert image_io._jpeg_decoder() is None  # the self-check failed: PIL from now on
    got = read_image_tensor(path).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)
