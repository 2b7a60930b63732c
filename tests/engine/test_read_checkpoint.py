"""``read_checkpoint``: model-zoo weight files in their real layouts, built here.

Layouts (as detectron2's ``DetectionCheckpointer._load_file`` and the writers define them):

- detectron2 model zoo ``.pkl``: ``{"model": {name: ndarray}, "__author__": ...}`` (also what
  ``convert_to_detectron2.py`` writes), returned as is;
- Detectron / Caffe2 detection ``.pkl`` (Detectron's ``save_model_to_weights_file``):
  ``{"blobs": {blob name: ndarray, ..., "<blob>_momentum": ndarray}, "cfg": yaml text}``;
  Caffe2 ImageNet ``.pkl`` (e.g. MSRA R-50.pkl): the blob dict itself. Both become
  ``{"model": blobs without the SGD momentum blobs, "__author__": "Caffe2",
  "matching_heuristics": True}`` (Caffe2 -> detectron2 name conversion on load);
- pycls ``.pyth`` (pycls ``save_checkpoint``): ``torch.save({"epoch", "model_state",
  "optimizer_state", "cfg"})``, read as its ``model_state`` minus BN ``num_batches_tracked``
  counters, with name-matching heuristics;
- a torch file: a checkpoint with "model" as is, a bare state dict wrapped as ``{"model": ...}``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from cyborgs.engine.checkpoint import SafeCheckpointer, read_checkpoint


def _arrays(names, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((2, 3)).astype(np.float32) for n in names}


C2_BLOBS = ["conv1_w", "res_conv1_bn_s", "res_conv1_bn_b", "res2_0_branch2a_w", "pred_b"]


def _same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert np.array_equal(np.asarray(got[k]), v), k


def test_detectron2_model_zoo_pkl_is_returned_as_is(tmp_path) -> None:
    model = _arrays(
        ["backbone.bottom_up.stem.conv1.weight", "roi_heads.box_predictor.bbox_pred.bias"]
    )
    path = tmp_path / "model_final_f10217.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2 Model Zoo"}))
    data = read_checkpoint(str(path))
    assert data["__author__"] == "Detectron2 Model Zoo"
    assert "matching_heuristics" not in data  # detectron2 names: loaded by exact name
    _same_arrays(data["model"], model)
    # a "model" key alone is not the model-zoo format: "__author__" marks it (else Caffe2 blobs)
    path.write_bytes(pickle.dumps({"model": model}))
    assert read_checkpoint(str(path))["__author__"] == "Caffe2"


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_caffe2_detection_pkl_blobs_without_momentum(tmp_path, protocol) -> None:
    blobs = _arrays(C2_BLOBS)
    momentum = {f"{k}_momentum": np.zeros((2, 3), np.float32) for k in C2_BLOBS}
    cfg_text = "MODEL:\n  TYPE: generalized_rcnn\n  CONV_BODY: ResNet.add_ResNet50_conv4_body\n"
    path = tmp_path / "model_final.pkl"  # Detectron writes protocol 2 (Python 2's highest)
    path.write_bytes(pickle.dumps({"blobs": {**blobs, **momentum}, "cfg": cfg_text}, protocol))
    data = read_checkpoint(str(path))
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"] is True
    _same_arrays(data["model"], blobs)  # no "_momentum" blob, no "cfg", nothing renamed


def test_caffe2_imagenet_pkl_is_the_blob_dict(tmp_path) -> None:
    blobs = _arrays(C2_BLOBS, seed=1)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({**blobs, "conv1_w_momentum": np.ones((2, 3))}, 2))
    data = read_checkpoint(str(path))
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"] is True
    _same_arrays(data["model"], blobs)


def test_caffe2_pkl_loads_into_a_detectron2_resnet_by_converted_names(tmp_path) -> None:
    """The point of the Caffe2 reading: blob names reach detectron2's ResNet parameters
    (conv1_w -> stem.conv1.weight, res_conv1_bn_s -> stem.conv1.norm.weight,
    res2_0_branch2a_w -> res2.0.conv1.weight)."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    sd = net.state_dict()
    rng = np.random.default_rng(2)
    names = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res_conv1_bn_b": "stem.conv1.norm.bias",
        "res2_0_branch2a_w": "res2.0.conv1.weight",
    }
    blobs = {
        c2: rng.standard_normal(tuple(sd[d2].shape)).astype(np.float32) for c2, d2 in names.items()
    }
    momentum = {f"{k}_momentum": np.zeros_like(v) for k, v in blobs.items()}
    path = tmp_path / "detectron_model.pkl"
    path.write_bytes(pickle.dumps({"blobs": {**blobs, **momentum}, "cfg": "{}"}, 2))
    SafeCheckpointer(net).load(str(path))
    after = net.state_dict()
    for c2, d2 in names.items():
        assert torch.equal(after[d2], torch.from_numpy(blobs[c2])), (c2, d2)
    assert torch.equal(after["res2.0.conv2.weight"], sd["res2.0.conv2.weight"])  # not in the file


def test_pycls_pyth_reads_model_state_without_bn_counters(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    state = net.state_dict()
    assert "1.num_batches_tracked" in state
    path = tmp_path / "model_epoch_0100.pyth"
    torch.save(
        {"epoch": 99, "model_state": state, "optimizer_state": opt.state_dict(),
         "cfg": "MODEL:\n  TYPE: resnet\n"},
        path,
    )  # fmt: skip
    data = read_checkpoint(str(path))
    assert data["__author__"] == "pycls" and data["matching_heuristics"] is True
    want = {k: v for k, v in state.items() if k != "1.num_batches_tracked"}
    assert sorted(data["model"]) == sorted(want)
    assert all(torch.equal(data["model"][k], v) for k, v in want.items())
    # a .pyth that is not a pycls checkpoint says what it lacks
    torch.save({"model": state}, tmp_path / "other.pyth")
    with pytest.raises(ValueError, match=r"other\.pyth.*'model_state'"):
        read_checkpoint(str(tmp_path / "other.pyth"))


def test_torch_files_bare_state_dict_is_wrapped_checkpoint_kept(tmp_path) -> None:
    net = nn.Linear(3, 2)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    data = read_checkpoint(str(tmp_path / "bare.pth"))
    assert sorted(data) == ["model"] and sorted(data["model"]) == ["bias", "weight"]
    assert torch.equal(data["model"]["weight"], net.weight)
    torch.save({"model": net.state_dict(), "iteration": 7}, tmp_path / "ckpt.pth")
    data = read_checkpoint(str(tmp_path / "ckpt.pth"))
    assert data["iteration"] == 7 and sorted(data["model"]) == ["bias", "weight"]
    assert "matching_heuristics" not in data and "__author__" not in data
