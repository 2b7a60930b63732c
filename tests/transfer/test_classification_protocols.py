"""VOC07 SVMs and semi-supervised fine-tuning: perfect on separable data, chance on shuffled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cyborgs.transfer.semi_supervised import (
    FinetuneSchedule,
    ResNetClassifier,
    evaluate_topk,
    finetune,
)
from cyborgs.transfer.voc07_svm import voc07_svm_map


def multilabel_toy(n: int, classes: int, dim: int, seed: int):
    """Features where class c is present iff coordinate c is positive: linearly separable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(n, classes))
    x = rng.normal(0, 0.3, size=(n, dim))
    x[:, :classes] += np.where(labels == 1, 2.0, -2.0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def test_voc07_svm_perfect_on_separable_and_chance_on_shuffled():
    names = ["a", "b", "c"]
    x_tr, y_tr = multilabel_toy(90, 3, 16, 0)
    x_te, y_te = multilabel_toy(60, 3, 16, 1)
    difficult = np.zeros_like(y_te)
    res = voc07_svm_map(x_tr, y_tr, x_te, y_te, difficult, names)
    assert res["mAP"] == 100.0
    assert set(res) >= {"AP-a", "cost-a"} and res["cost-a"] in (0.01, 0.1, 1.0, 10.0)

    # labels unrelated to the features: AP ~ positive rate (~50%), far from perfect
    rng = np.random.default_rng(2)
    shuffled = voc07_svm_map(
        x_tr, rng.permutation(y_tr), x_te, rng.permutation(y_te), difficult, names
    )
    assert 25.0 < shuffled["mAP"] < 75.0

    # difficult test images are excluded: marking every wrongly-scored image difficult
    # cannot lower AP, and a class with only difficult positives is skipped
    difficult[:, 2] = y_te[:, 2]
    res2 = voc07_svm_map(x_tr, y_tr, x_te, y_te, difficult, names)
    assert "AP-c" not in res2 and res2["mAP"] == 100.0


def separable_images(n: int, classes: int, seed: int, shuffle: bool = False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.1
    x[torch.arange(n), y % 3] += 1.0 + (y // 3).float()[:, None, None]  # class-coded channel
    if shuffle:
        y = y[torch.randperm(n, generator=g)]
    return TensorDataset(x, y)


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())


def test_semi_supervised_perfect_on_separable_and_chance_on_shuffled():
    torch.manual_seed(0)
    classes = 6
    sched = FinetuneSchedule(epochs=30, base_lr=0.05, head_lr_mult=10.0, steps=(18, 24))
    model = ResNetClassifier(tiny_backbone(), 16, classes)
    train = DataLoader(separable_images(120, classes, 0), batch_size=20, shuffle=True)
    hist = finetune(model, train, sched)
    assert hist[-1] < hist[0]
    res = evaluate_topk(model, DataLoader(separable_images(60, classes, 1), batch_size=30))
    assert res["top1"] == 100.0 and res["top5"] == 100.0

    torch.manual_seed(0)
    model = ResNetClassifier(tiny_backbone(), 16, classes)
    finetune(model, DataLoader(separable_images(120, classes, 0, shuffle=True), batch_size=20,
                               shuffle=True), sched)  # fmt: skip
    res = evaluate_topk(model, DataLoader(separable_images(300, classes, 3, shuffle=True),
                                          batch_size=100))  # fmt: skip
    assert res["top1"] < 35.0  # chance is 16.7%
    assert res["top5"] > res["top1"]


def test_head_gets_the_lr_multiplier():
    from cyborgs.transfer.semi_supervised import build_optimizer

    model = ResNetClassifier(tiny_backbone(), 16, 4)
    opt, sched = build_optimizer(model, FinetuneSchedule(base_lr=0.01, head_lr_mult=100.0))
    assert [g["lr"] for g in opt.param_groups] == [0.01, 1.0]
    for _ in range(12):
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.01 * 0.2


def _r18_pkl(tmp_path) -> str:
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from cyborgs.transfer.convert import convert_checkpoint

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.RESNETS.OUT_FEATURES = "BN", ["res5"]
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    torch.save({"model": {"backbone." + k: v for k, v in state.items()}}, tmp_path / "c.pth")
    convert_checkpoint(str(tmp_path / "c.pth"), str(tmp_path / "r18.pkl"))
    return str(tmp_path / "r18.pkl")


def test_tools_end_to_end_on_tiny_demo(tiny_data_root, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    def tool(name):
        path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    weights = _r18_pkl(tmp_path)
    rec = tool("voc07_svm").main(
        ["--weights", weights, "--output-dir", str(tmp_path / "svm"), "--train",
         "demo_voc_2007_cls_trainval", "--test", "demo_voc_2007_cls_test", "--resize", "64",
         "--crop", "56", "--num-workers", "0", "--device", "cpu"]
    )  # fmt: skip
    assert 0.0 <= rec["results"]["voc07_cls"]["mAP"] <= 100.0
    saved = json.loads((tmp_path / "svm" / "metrics_final.json").read_text())
    assert saved["protocol"] == "voc07_svm"

    rec = tool("semi_supervised").main(
        ["--weights", weights, "--output-dir", str(tmp_path / "in1"), "--prefix", "demo_",
         "--epochs", "1", "--steps", "1", "--batch-size", "8", "--crop", "48", "--resize", "56",
         "--num-workers", "0", "--device", "cpu"]
    )  # fmt: skip
    res = rec["results"]["classification"]
    assert rec["protocol"] == "in1pct" and 0.0 <= res["top1"] <= res["top5"] <= 100.0


# ---- the tools end to end on data with a known answer -------------------------------------
class ColourBackbone(nn.Module):
    """Stands in for the converted ResNet: its "res5" map is the (normalised) image itself, so
    the GAP feature is the image's mean colour. One parameter, as a trunk to fine-tune."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res5": x * self.scale}

    def output_shape(self):
        from detectron2.layers import ShapeSpec

        return {"res5": ShapeSpec(channels=3, stride=1)}


def _colour_images(folder, channels_on: np.ndarray, seed: int) -> list[str]:
    """One solid 32x32 PNG per row of ``channels_on`` [N, 3]: an "on" channel in [150, 255],
    an "off" one in [0, 100] (random per image, so no two images score alike)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, on in enumerate(channels_on):
        colour = np.where(on, rng.integers(150, 256, 3), rng.integers(0, 101, 3)).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.broadcast_to(colour, (32, 32, 3)).copy()).save(path)
        files.append(str(path))
    return files


@pytest.fixture
def register_sets():
    """Registers data sets for one test (names must be new) and removes them afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []

    def register(name: str, dicts: list[dict], **meta) -> None:
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(**meta)
        names.append(name)

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _tool(name: str, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "build_pretrained_resnet", lambda weights, depth: ColourBackbone())
    return mod


def test_voc07_svm_tool_known_answers(register_sets, monkeypatch, tmp_path):
    """Class c present iff colour channel c is bright: the features the tool extracts are
    separable, so its mAP is 100. With the test labels complemented the SVM ranks every
    positive below every negative: AP = (1/P) sum_{k=1..P} k / (N + k) for P positives and N
    negatives (no ties: every image has its own colour)."""
    rng = np.random.default_rng(0)
    names = ["r", "g", "b"]
    y_tr, y_te = rng.integers(0, 2, (36, 3)), rng.integers(0, 2, (24, 3))
    tr = _colour_images(tmp_path / "train", y_tr, 1)
    te = _colour_images(tmp_path / "test", y_te, 2)

    def dicts(files, y):
        return [{"file_name": f, "image_id": i, "height": 32, "width": 32, "labels": list(v),
                 "difficult": [0, 0, 0]} for i, (f, v) in enumerate(zip(files, y, strict=True))]  # fmt: skip

    meta = {"thing_classes": names, "evaluator_type": "voc_cls"}
    register_sets("colour_cls_train", dicts(tr, y_tr), **meta)
    register_sets("colour_cls_test", dicts(te, y_te), **meta)
    register_sets("colour_cls_test_inverted", dicts(te, 1 - y_te), **meta)
    (tmp_path / "w.pkl").write_bytes(b"")
    tool = _tool("voc07_svm", monkeypatch)

    def run(test_set):
        return tool.main(["--weights", str(tmp_path / "w.pkl"), "--output-dir",
                          str(tmp_path / test_set), "--train", "colour_cls_train", "--test",
                          test_set, "--resize", "32", "--crop", "32", "--batch-size", "7",
                          "--num-workers", "0", "--device", "cpu"])["results"]["voc07_cls"]  # fmt: skip

    assert run("colour_cls_test")["mAP"] == pytest.approx(100.0)
    inverted = run("colour_cls_test_inverted")
    for c, name in enumerate(names):
        pos, neg = int((y_te[:, c] == 0).sum()), int(y_te[:, c].sum())
        worst = 100 * np.mean([k / (neg + k) for k in range(1, pos + 1)])
        assert inverted[f"AP-{name}"] == pytest.approx(worst), name


def test_semi_supervised_tool_known_answers(register_sets, monkeypatch, tmp_path):
    """Class = the bright colour channel: fine-tuning the head on the extracted features reaches
    100% top-1 on the validation images. Validated against permuted labels instead, the same
    (seeded) run scores exactly the fraction of images whose permuted label is their own."""
    rng = np.random.default_rng(0)
    y_tr, y_va = np.arange(30) % 3, rng.permutation(np.arange(30) % 3)
    tr = _colour_images(tmp_path / "train", np.eye(3, dtype=bool)[y_tr], 1)
    va = _colour_images(tmp_path / "val", np.eye(3, dtype=bool)[y_va], 2)
    shuffled = rng.permutation(y_va)

    def dicts(files, y):
        return [{"file_name": f, "image_id": i, "label": int(c)}
                for i, (f, c) in enumerate(zip(files, y, strict=True))]  # fmt: skip

    meta = {"thing_classes": ["r", "g", "b"]}
    for prefix, val_labels in (("colour_", y_va), ("colour_shuffled_", shuffled)):
        register_sets(f"{prefix}imagenet_train_1percent", dicts(tr, y_tr), **meta)
        register_sets(f"{prefix}imagenet_val", dicts(va, val_labels), **meta)
    (tmp_path / "w.pkl").write_bytes(b"")
    tool = _tool("semi_supervised", monkeypatch)

    def run(prefix):
        return tool.main(["--weights", str(tmp_path / "w.pkl"), "--output-dir",
                          str(tmp_path / prefix), "--prefix", prefix, "--epochs", "8", "--steps",
                          "6", "--batch-size", "10", "--lr", "0.256", "--crop", "32", "--resize",
                          "32", "--num-workers", "0", "--device", "cpu"])["results"]["classification"]  # fmt: skip

    assert run("colour_")["top1"] == 100.0
    chance = 100.0 * float(np.mean(shuffled == y_va))
    assert run("colour_shuffled_")["top1"] == pytest.approx(chance)
    assert chance < 60.0  # the control is a real one
