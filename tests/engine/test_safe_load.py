"""Loading weights never executes code: crafted pickles through every weights entry point.

Each crafted file would create a marker file if any loader unpickled it with the standard
``find_class`` (or the allow-list trusted a whole module). The files: classic ``__reduce__``
payloads (``os.system``, ``builtins.eval``, ``subprocess.call``) at protocols 2-5; the
protocol-4/5 dotted-name trick (``STACK_GLOBAL "numpy.dtypes" "_add_dtype_helper.__builtins__
.get"`` -> the builtins dict's ``get`` -> ``eval``), which the old module-wide ``numpy.dtypes``
trust let through; module-wildcard tricks (``numpy.load(f, None, True)`` unpickles a second
file; ``numpy.dtypes._add_dtype_helper`` rewrites a module); and the same payloads inside a
torch zip ``.pth`` and a legacy-format torch file. Each goes through the loader of every entry
point (pretrain MODEL.WEIGHTS, pretrain --resume via a planted last_checkpoint, train_net's
transfer checkpointer, voc07_svm, semi_supervised, bootstrap_masks, visualize_masks,
convert_to_detectron2), and the entry points' own ``main`` functions run a few of them
in-process (one as a subprocess).
"""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cyborgs.engine.checkpoint import SafeCheckpointer
from cyborgs.engine.weights_io import (
    CheckpointFormatError,
    NotACheckpointError,
    UnsafeCheckpointError,
    load_weights,
)

REPO = Path(__file__).resolve().parents[2]
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ---- crafting ----
class _Reduce:
    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _touch_code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _classic(kind: str, marker: Path) -> tuple[_Reduce, str]:
    """A ``__reduce__`` payload and the global a refusal must name."""
    if kind == "os.system":
        return _Reduce(os.system, (f"touch {marker}",)), f"{os.system.__module__}.system"
    if kind == "builtins.eval":
        return _Reduce(eval, (_touch_code(marker),)), "builtins.eval"
    return _Reduce(subprocess.call, (["touch", str(marker)],)), "subprocess.call"


def _py2(glob: str) -> str:
    """How a protocol < 3 pickle spells ``glob`` (pickle maps names to their Python 2 homes)."""
    module, _, name = glob.rpartition(".")
    if (module, name) in _compat_pickle.REVERSE_NAME_MAPPING:
        return ".".join(_compat_pickle.REVERSE_NAME_MAPPING[(module, name)])
    return f"{_compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module)}.{name}"


def _str(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _dotted(marker: Path, proto: int) -> bytes:
    """numpy.dtypes + a dotted attribute path -> builtins dict .get("eval") -> eval(code)."""
    name = "_add_dtype_helper.__builtins__.get"
    if proto >= 4:  # STACK_GLOBAL resolves dotted paths at protocol >= 4
        glob = _str("numpy.dtypes") + _str(name) + b"\x93"
    else:  # GLOBAL opcode with the dotted name
        glob = b"cnumpy.dtypes\n" + name.encode() + b"\n"
    call_eval = _str("eval") + b"\x85R" + _str(_touch_code(marker)) + b"\x85R"
    return bytes([0x80, proto]) + glob + call_eval + b"."


def _numpy_load(inner: Path) -> bytes:
    """Module wildcard "numpy": numpy.load(inner, None, True) unpickles ``inner`` (allow_pickle)."""
    args = _str(str(inner)) + b"N\x88\x87"  # (path, None, True)
    return b"\x80\x04" + _str("numpy") + _str("load") + b"\x93" + args + b"R."


def _dtype_helper() -> bytes:
    """Module wildcard "numpy.dtypes": _add_dtype_helper(OrderedDict, "ndarray") rewrites it."""
    od = _str("collections") + _str("OrderedDict") + b"\x93"
    fn = _str("numpy.dtypes") + _str("_add_dtype_helper") + b"\x93"
    return b"\x80\x04" + fn + od + _str("ndarray") + b"\x86R."


def _torch_zip(data_pkl: bytes) -> bytes:
    """A torch zip checkpoint whose data.pkl is replaced by ``data_pkl``."""
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1)}}, buf)
    src, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            data = data_pkl if info.filename.endswith("/data.pkl") else src.read(info)
            z.writestr(info.filename, data)
    return out.getvalue()


def _torch_legacy(data_pkl: bytes) -> bytes:
    """torch's legacy format: magic, protocol version, sys info, the object, storage keys."""
    head = [_TORCH_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}]
    return b"".join(pickle.dumps(x, protocol=2) for x in head) + data_pkl + pickle.dumps([])


def crafted_specs(marker: Path, inner: Path) -> list[tuple[str, str, str, bytes]]:
    """(id, extension, offending global, bytes) of every crafted weight file. ``inner`` is the
    classic pickle the numpy.load trick unpickles."""
    out: list[tuple[str, str, str, bytes]] = []
    for kind in ("os.system", "builtins.eval", "subprocess"):
        obj, glob = _classic(kind, marker)
        for proto in (2, 3, 4, 5):
            spelled = _py2(glob) if proto < 3 else glob
            out.append((f"{kind}-p{proto}", "pkl", spelled, pickle.dumps(obj, protocol=proto)))
        p2 = pickle.dumps(obj, protocol=2)
        out.append((f"{kind}-zip", "pth", _py2(glob), _torch_zip(p2)))
        out.append((f"{kind}-legacy", "pth", _py2(glob), _torch_legacy(p2)))
    dotted_global = "numpy.dtypes._add_dtype_helper.__builtins__.get"
    for proto in (2, 4, 5):
        out.append((f"dotted-p{proto}", "pkl", dotted_global, _dotted(marker, proto)))
    out.append(("dotted-zip", "pth", dotted_global, _torch_zip(_dotted(marker, 4))))
    out.append(("dotted-legacy", "pth", dotted_global, _torch_legacy(_dotted(marker, 4))))
    npload = _numpy_load(inner)
    out.append(("wildcard-numpy.load", "pkl", "numpy.load", npload))
    out.append(("wildcard-numpy.load-zip", "pth", "numpy.load", _torch_zip(npload)))
    helper = _dtype_helper()
    out.append(("wildcard-dtypes", "pkl", "numpy.dtypes._add_dtype_helper", helper))
    out.append(("wildcard-dtypes-legacy", "pth", "numpy.dtypes._add_dtype_helper",
                _torch_legacy(helper)))  # fmt: skip
    return out


CRAFTED = [name for name, *_ in crafted_specs(Path("marker"), Path("inner"))]


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[dict[str, tuple[Path, str]], Path]:
    d = tmp_path_factory.mktemp("crafted")
    marker = d / "PWNED"
    inner = d / "inner.npy"
    with open(inner, "wb") as f:
        pickle.dump(_classic("os.system", marker)[0], f, protocol=2)
    files = {}
    for name, ext, glob, data in crafted_specs(marker, inner):
        files[name] = (d / f"{name}.{ext}", glob)
        files[name][0].write_bytes(data)
    return files, marker


def test_crafted_payloads_really_run_when_unpickled(crafted) -> None:
    """The test files are real exploits: plain pickle.load of a few of them runs the payload."""
    files, marker = crafted
    for name in ("os.system-p2", "builtins.eval-p4", "dotted-p4", "wildcard-numpy.load"):
        with open(files[name][0], "rb") as f:
            try:
                pickle.load(f)
            except Exception:  # noqa: BLE001 -- payloads need not return anything usable
                pass
        assert marker.exists(), name
        marker.unlink()


# ---- the loaders behind each entry point ----
def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2))


def _pretrain_weights(path: Path, tmp: Path) -> None:
    # CyborgsTrainer.resume_or_load -> its SafeCheckpointer.resume_or_load(MODEL.WEIGHTS)
    SafeCheckpointer(_tiny_model(), str(tmp)).resume_or_load(str(path), resume=False)


def _pretrain_resume(path: Path, tmp: Path) -> None:
    out = tmp / "run"
    out.mkdir()
    planted = out / "model_0000009.pth"  # last_checkpoint may only name a .pth beside it
    planted.write_bytes(path.read_bytes())
    (out / "last_checkpoint").write_text(planted.name)
    SafeCheckpointer(_tiny_model(), str(out)).resume_or_load("", resume=True)


def _train_net(path: Path, tmp: Path) -> None:
    from types import SimpleNamespace

    from cyborgs.transfer.trainer import build_checkpointer, check_backbone_loaded

    ck = build_checkpointer(_tiny_model(), str(tmp))
    with pytest.raises(UnsafeCheckpointError):
        ck.resume_or_load(str(path), resume=False)
    # the backbone proof reads the file a second time: also through the safe loader
    cfg = SimpleNamespace(
        MODEL=SimpleNamespace(WEIGHTS=str(path), BACKBONE=SimpleNamespace(NAME="x")),
        TRANSFER=SimpleNamespace(CHECK_BACKBONE_LOADED=True),
    )
    check_backbone_loaded(cfg, _tiny_model(), ck)


def _classification(path: Path, tmp: Path) -> None:
    # voc07_svm and semi_supervised both build their trunk with build_pretrained_resnet
    from cyborgs.transfer.image_data import build_pretrained_resnet

    build_pretrained_resnet(str(path))


def _mask_tools(path: Path, tmp: Path) -> None:
    # bootstrap_masks and visualize_masks both load --weights in build_model_and_cfg
    SafeCheckpointer(_tiny_model()).load(str(path))


def _convert(path: Path, tmp: Path) -> None:
    from cyborgs.transfer.convert import convert_checkpoint

    convert_checkpoint(str(path), str(tmp / "out.pkl"))


LOADERS = {
    "pretrain-weights": (_pretrain_weights, None),
    "pretrain-resume": (_pretrain_resume, None),
    "train_net": (_train_net, None),
    "voc07_svm+semi_supervised": (_classification, "pkl"),
    "bootstrap_masks+visualize_masks": (_mask_tools, None),
    "convert_to_detectron2": (_convert, "pth"),
}


@pytest.mark.parametrize("name", CRAFTED)
@pytest.mark.parametrize("entry", list(LOADERS))
def test_crafted_file_refused_by_every_loader(crafted, tmp_path, entry: str, name: str) -> None:
    files, marker = crafted
    path, glob = files[name]
    load, expect = LOADERS[entry]
    fmt = "pkl" if path.suffix == ".pkl" else "pth"
    if expect is not None and fmt != expect:
        # the wrong kind of file is refused from its first bytes, before any unpickling
        with pytest.raises(CheckpointFormatError, match=rf"expects a \.{expect}") as e:
            load(path, tmp_path)
        assert str(path) in str(e.value)
    else:
        with pytest.raises(UnsafeCheckpointError) as e:
            load(path, tmp_path)
        msg = str(e.value)
        shown = tmp_path / "run" / "model_0000009.pth" if entry == "pretrain-resume" else path
        assert str(shown) in msg and glob in msg, msg
    assert not marker.exists()


def test_pickle_protocol_0_and_1_payloads_refused(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    for proto in (0, 1):
        p = tmp_path / f"p{proto}.pkl"
        p.write_bytes(pickle.dumps(_classic("builtins.eval", marker)[0], protocol=proto))
        with pytest.raises(UnsafeCheckpointError, match=r"p[01]\.pkl.*__builtin__\.eval"):
            load_weights(str(p))
    assert not marker.exists()


def test_copyreg_extension_codes_go_through_the_allow_list(tmp_path) -> None:
    import copyreg

    marker = tmp_path / "PWNED"
    copyreg.add_extension("posix", "system", 0x7FF1)
    try:
        p = tmp_path / "ext.pkl"
        p.write_bytes(b"\x80\x02\x83\xf1\x7f" + _str(f"touch {marker}") + b"\x85R.")  # EXT2
        with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
            load_weights(str(p))
    finally:
        copyreg.remove_extension("posix", "system", 0x7FF1)
    assert not marker.exists()


def test_object_arrays_refused(tmp_path) -> None:
    p = tmp_path / "obj.pkl"
    with open(p, "wb") as f:
        pickle.dump({"model": {"w": np.array([1, "a"], dtype=object)}}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=r"obj\.pkl.*object"):
        load_weights(str(p))


class _DirectNdarray:
    """numpy.ndarray called directly with an object dtype over the file's bytes: an array whose
    element is a pointer the file chose (dereferenced when used)."""

    def __reduce__(self):
        return (np.ndarray, ((1,), "O", b"AAAAAAAA"))


class _FlaggedDtype:
    """A harmless V8 dtype whose pickled state sets the object flags (57) through BUILD."""

    def __reduce__(self):
        return (np.dtype, ("V8", False, True), (3, "|", None, None, None, 8, 1, 57))


@pytest.mark.parametrize("payload", [_DirectNdarray, _FlaggedDtype])
@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_object_arrays_through_allowed_numpy_names_refused(tmp_path, payload, proto) -> None:
    """Both use only allow-listed names (numpy.ndarray, numpy.dtype), so an exact-name list
    alone does not stop them: the loader also refuses direct ndarray calls and object flags."""
    p = tmp_path / "ptr.pkl"
    p.write_bytes(pickle.dumps({"model": {"w": payload()}}, protocol=proto))
    with pytest.raises(UnsafeCheckpointError, match=r"ptr\.pkl.*(directly|objects)"):
        load_weights(str(p))


# ---- legitimate files still load ----
def _numpy_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "stem.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "stem.conv1.norm.running_var": np.ones(4, np.float32),
        "res2.0.conv1.weight": np.asfortranarray(rng.standard_normal((4, 4)).astype(np.float64)),
        "ids": np.arange(5, dtype=np.int64),
        "half": np.zeros(3, np.float16),
        "big_endian": np.arange(3, dtype=">f4"),
        "empty": np.zeros((0, 2), np.float32),
        "scalar": np.float32(2.5),
    }


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_numpy_pickles_load_at_every_protocol(tmp_path, proto: int) -> None:
    import collections

    state = _numpy_state()
    payload = {"model": collections.OrderedDict(state), "__author__": "MOCO", "b": b"\x00\xff"}
    p = tmp_path / "w.pkl"
    p.write_bytes(pickle.dumps(payload, protocol=proto))
    got = load_weights(str(p), expect="pkl")
    ref = pickle.loads(p.read_bytes())  # the reference: unrestricted unpickling, trusted file
    assert got["__author__"] == "MOCO" and got["b"] == b"\x00\xff"
    assert isinstance(got["model"], collections.OrderedDict)
    for k, v in state.items():
        assert type(got["model"][k]) is type(ref["model"][k]), k
        assert np.asarray(got["model"][k]).dtype == np.asarray(ref["model"][k]).dtype, k
        assert np.array_equal(got["model"][k], v), k


def _as_numpy1(raw: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it: ``numpy.core.*`` instead of ``numpy._core.*``."""
    if raw[2:3] == b"\x95":  # drop the (optional) frame: the names below change its length
        raw = raw[:2] + raw[11:]
    for mod in (b"numpy._core.multiarray", b"numpy._core.numeric"):
        new = mod.replace(b"._core.", b".core.")
        raw = raw.replace(b"\x8c" + bytes([len(mod)]) + mod, b"\x8c" + bytes([len(new)]) + new)
        raw = raw.replace(b"c" + mod + b"\n", b"c" + new + b"\n")
    return raw


def test_numpy1_pickle_names_load(tmp_path) -> None:
    """numpy 1.x writes numpy.core.*; numpy 2.x numpy._core.*: both load on this numpy."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    for proto in (2, 4, 5):
        raw = pickle.dumps({"model": {"w": w, "s": np.float64(3.0)}}, protocol=proto)
        old = _as_numpy1(raw)
        assert b"numpy._core" not in old and b"numpy.core.multiarray" in old
        p = tmp_path / f"np1_p{proto}.pkl"
        p.write_bytes(old)
        got = load_weights(str(p))
        assert np.array_equal(got["model"]["w"], w) and got["model"]["s"] == 3.0


def test_real_converted_pkl_and_real_pth_load(tmp_path) -> None:
    from cyborgs.transfer.convert import write_detectron2_pkl

    state = {k: torch.from_numpy(v) for k, v in _numpy_state().items() if k in ("ids", "half")}
    write_detectron2_pkl(state, str(tmp_path / "b.pkl"))
    m = nn.Sequential(nn.Linear(3, 4))
    torch.save({"model": m.state_dict(), "iteration": 3}, tmp_path / "m.pth")
    torch.save(m.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    data = load_weights(str(tmp_path / "b.pkl"), expect="pkl")
    assert data["__author__"] == "CYBORGS" and np.array_equal(data["model"]["ids"], np.arange(5))
    for name in ("m.pth", "legacy.pth"):
        m2 = nn.Sequential(nn.Linear(3, 4))
        SafeCheckpointer(m2).load(str(tmp_path / name))
        assert torch.equal(m2[0].weight, m[0].weight), name


# ---- the entry points' own main(), in-process ----
def _pretrain_args(argv: list[str]) -> argparse.Namespace:
    from pretrain_net import get_parser

    return get_parser().parse_args(argv)


_PRETRAIN_OPTS = ["SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_WORKERS", "0",
                  "CYBORGS.AUG.CROP_SIZE", "48"]  # fmt: skip


@pytest.mark.parametrize("name", ["dotted-p4", "os.system-zip"])
def test_pretrain_net_main_refuses_weights(tiny_data_root, crafted, tmp_path, name) -> None:
    from pretrain_net import main

    files, marker = crafted
    path, glob = files[name]
    args = _pretrain_args(["--config-file", str(REPO / "pretrain_configs/demo_R18.yaml"),
                           "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(path),
                           *_PRETRAIN_OPTS])  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match=glob.replace(".", r"\.")):
        main(args)
    assert not marker.exists()


def test_pretrain_net_main_resume_refuses_planted_checkpoint(tiny_data_root, crafted, tmp_path):
    from pretrain_net import main

    files, marker = crafted
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000005.pth").write_bytes(files["dotted-p5"][0].read_bytes())
    (out / "last_checkpoint").write_text("model_0000005.pth")
    args = _pretrain_args(["--config-file", str(REPO / "pretrain_configs/demo_R18.yaml"),
                           "--resume", "OUTPUT_DIR", str(out), *_PRETRAIN_OPTS])  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match=r"model_0000005\.pth.*numpy\.dtypes\._add"):
        main(args)
    assert not marker.exists()
    # last_checkpoint may not point the loader outside OUTPUT_DIR or at a .pkl
    for planted in (str(files["dotted-p4"][0]), "../x.pth", "evil.pkl"):
        (out / "last_checkpoint").write_text(planted)
        with pytest.raises(UnsafeCheckpointError, match=r"last_checkpoint names"):
            main(args)
    assert not marker.exists()


def test_train_net_main_refuses_weights(tiny_data_root, crafted, tmp_path) -> None:
    from detectron2.engine import default_argument_parser
    from train_net import main

    files, marker = crafted
    for name, extra in (("dotted-p4", ["--eval-only"]), ("builtins.eval-legacy", [])):
        path, glob = files[name]
        args = default_argument_parser().parse_args(
            ["--config-file", str(REPO / "transfer_configs/demo_voc_det_C4.yaml"), *extra,
             "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / name),
             "DATALOADER.NUM_WORKERS", "0"]
        )  # fmt: skip
        with pytest.raises(UnsafeCheckpointError, match=glob.replace(".", r"\.")):
            main(args)
    assert not marker.exists()


def test_classification_tools_main_refuse_weights(tiny_data_root, crafted, tmp_path) -> None:
    from semi_supervised import main as semi_main
    from voc07_svm import main as voc_main

    files, marker = crafted
    voc = ["--train", "demo_voc_2007_cls_trainval", "--test", "demo_voc_2007_cls_test"]
    for main, extra in ((voc_main, voc), (semi_main, ["--prefix", "demo_"])):
        path, glob = files["dotted-p4"]
        argv = ["--weights", str(path), "--output-dir", str(tmp_path / "o"), *extra]
        with pytest.raises(UnsafeCheckpointError, match=glob.replace(".", r"\.")):
            main(argv)
        path, _ = files["os.system-zip"]  # a .pth: refused as the wrong kind, not unpickled
        argv = ["--weights", str(path), "--output-dir", str(tmp_path / "o"), *extra]
        with pytest.raises(CheckpointFormatError, match=r"expects a \.pkl"):
            main(argv)
    assert not marker.exists()


def test_mask_tools_main_refuse_weights(crafted, tmp_path, capsys) -> None:
    from bootstrap_masks import main as bootstrap_main
    from visualize_masks import main as visualize_main

    files, marker = crafted
    cfg = ["--config-file", str(REPO / "pretrain_configs/demo_R18.yaml")]
    for name in ("os.system-p2", "dotted-p4", "subprocess-legacy"):
        path, glob = files[name]
        # both load through bootstrap_masks.build_model_and_cfg: one error line, exit 2
        for argv in ([], ["--input", "x.jpg", "--output", str(tmp_path / "vis")]):
            main = visualize_main if argv else bootstrap_main
            capsys.readouterr()
            with pytest.raises(SystemExit) as e:
                main([*cfg, "--weights", str(path), *argv])
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert e.value.code == 2 and err.startswith(f"error: Refusing to load {path}"), err
            assert glob in err
    assert not marker.exists()


def test_convert_main_refuses_weights(crafted, tmp_path) -> None:
    from convert_to_detectron2 import main

    files, marker = crafted
    path, glob = files["builtins.eval-zip"]
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        main([str(path), str(tmp_path / "o.pkl")])
    with pytest.raises(CheckpointFormatError, match=r"expects a \.pth"):
        main([str(files["dotted-p4"][0]), str(tmp_path / "o.pkl")])
    assert not marker.exists() and not (tmp_path / "o.pkl").exists()


def test_bootstrap_masks_subprocess_smoke(crafted, tmp_path) -> None:
    files, marker = crafted
    path, glob = files["dotted-p4"]
    res = subprocess.run(
        [sys.executable, str(REPO / "tools/bootstrap_masks.py"), "--config-file",
         str(REPO / "pretrain_configs/demo_R18.yaml"), "--weights", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Refusing to load {path}") and glob in last, res.stderr
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path) -> None:
    for name, data in (("t.pth", b"hello, I am text\n"), ("r.pkl", os.urandom(4096)),
                       ("e.pth", b""), ("c.pkl", b"(lp0\nI1\n")):  # fmt: skip
        p = tmp_path / name
        p.write_bytes(data)
        if name == "r.pkl" and data[:1] in b"\x80(}])c":
            p.write_bytes(b"\x01" + data)
        with pytest.raises(NotACheckpointError, match=rf"{name}.* not a .*checkpoint"):
            SafeCheckpointer(_tiny_model()).load(str(p))
