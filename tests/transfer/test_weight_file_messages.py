"""Transfer tools name the actual problem with a weights file: "not a checkpoint" for text,
random or truncated files; "expects a .pkl" / "expects a .pth" for the wrong kind of file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from cyborgs.engine.weights_io import CheckpointFormatError, NotACheckpointError
from cyborgs.transfer.convert import convert_checkpoint
from cyborgs.transfer.image_data import build_pretrained_resnet
from cyborgs.transfer.trainer import build_checkpointer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    files = {
        "text.pth": b"model weights are at https://example.org/weights\n",
        "random.pkl": b"\x01" + os.urandom(2048),
        "empty.pkl": b"",
        "image.pth": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / name
        out[name].write_bytes(data)
    full = tmp_path / "full.pth"
    torch.save({"model": {"backbone.w": torch.zeros(1000)}}, full)
    out["truncated.pth"] = tmp_path / "truncated.pth"
    out["truncated.pth"].write_bytes(full.read_bytes()[:700])
    return out


def _readers(tmp_path):
    return {
        "convert": lambda p: convert_checkpoint(str(p), str(tmp_path / "o.pkl")),
        "voc07_svm/semi_supervised": lambda p: build_pretrained_resnet(str(p)),
        "train_net": lambda p: build_checkpointer(nn.Linear(1, 1), str(tmp_path)).resume_or_load(
            str(p), resume=False
        ),
    }


def test_not_a_checkpoint(bad_files, tmp_path) -> None:
    for reader, read in _readers(tmp_path).items():
        for name, path in bad_files.items():
            if name == "truncated.pth" and reader.startswith("voc07"):
                with pytest.raises(CheckpointFormatError, match=r"expects a \.pkl"):
                    read(path)  # a torch file, if a broken one: the wrong kind first of all
                continue
            with pytest.raises(NotACheckpointError, match=r"not a (complete )?checkpoint") as e:
                read(path)
            assert str(path) in str(e.value), (reader, name)
            if name == "truncated.pth":
                assert "truncated or corrupt" in str(e.value)


def test_wrong_kind_of_weights_file(r18_converted_pkl, tmp_path) -> None:
    with pytest.raises(CheckpointFormatError, match=r"converter expects a \.pth") as e:
        convert_checkpoint(r18_converted_pkl, str(tmp_path / "o.pkl"))
    assert r18_converted_pkl in str(e.value) and "is a pickle" in str(e.value)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(CheckpointFormatError, match=r"expects a \.pkl.*convert_to_detectron2"):
        build_pretrained_resnet(str(ckpt))
    # a converted backbone under a .pth name is still a pickle: judged by content, loads
    renamed = tmp_path / "backbone.pth"
    renamed.write_bytes(Path(r18_converted_pkl).read_bytes())
    assert build_pretrained_resnet(str(renamed)) is not None


def test_convert_tool_says_not_a_checkpoint(bad_files, tmp_path) -> None:
    from convert_to_detectron2 import main  # tools/ (tests/conftest.py)

    with pytest.raises(NotACheckpointError, match=r"text\.pth is not a checkpoint"):
        main([str(bad_files["text.pth"]), str(tmp_path / "o.pkl")])


def test_train_net_preflight_says_not_a_checkpoint(bad_files) -> None:
    from detectron2.config import get_cfg

    from cyborgs.transfer.preflight import check_weights

    cfg = get_cfg()
    cfg.MODEL.WEIGHTS = str(bad_files["text.pth"])
    with pytest.raises(NotACheckpointError, match=r"text\.pth is not a checkpoint"):
        check_weights(cfg, eval_only=False)
