"""Checkpoints: weights-only round trip, refusal of pickled objects, atomic writes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from cyborgs.engine.checkpoint import (
    RunInfo,
    SafeCheckpointer,
    UnsafeCheckpointError,
    check_plain,
    safe_load,
    safe_load_pickle,
)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _State:
    def __init__(self, value) -> None:
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, s) -> None:
        self.value = s["value"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_round_trip_weights_only(tmp_path) -> None:
    m = _model()
    rng = torch.get_rng_state()
    extra = _State({"rng": rng, "epoch": 3, "names": ["a", "b"], "x": None})
    ck = SafeCheckpointer(m, str(tmp_path), save_to_disk=True, extra=extra)
    ck.add_checkpointable("run_info", RunInfo("MODEL:\n  DEVICE: cpu\n", "Namespace(a=1)"))
    ck.save("model_0000009", iteration=9)
    path = tmp_path / "model_0000009.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    raw = torch.load(path, weights_only=True)  # plain: the strict loader accepts it
    assert raw["iteration"] == 9 and raw["run_info"]["config"].startswith("MODEL")
    # no temp files left behind
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]

    m2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    extra2 = _State(None)
    ck2 = SafeCheckpointer(m2, str(tmp_path), save_to_disk=True, extra=extra2)
    rest = ck2.resume_or_load("", resume=True)
    assert rest["iteration"] == 9
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert extra2.value["epoch"] == 3 and torch.equal(extra2.value["rng"], rng)


def test_save_refuses_non_plain_state_naming_key(tmp_path) -> None:
    ck = SafeCheckpointer(_model(), str(tmp_path), save_to_disk=True, hook=_State(np.float64(1)))
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint 'm'/hook/value holds a numpy"):
        ck.save("m")
    assert not (tmp_path / "m.pth").exists()
    with pytest.raises(UnsafeCheckpointError, match=r"x/k\[1\] holds a .*_State"):
        check_plain({"k": [1, _State(1)]}, "x")


def test_load_refuses_pickled_object_with_clear_error(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*posix\.system|evil\.pth.*system"):
        safe_load(str(path))
    ck = SafeCheckpointer(_model(), str(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        ck.load(str(path))


def test_pkl_restricted_unpickler(tmp_path) -> None:
    good = tmp_path / "good.pkl"
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    with open(good, "wb") as f:
        pickle.dump(
            {"model": {"0.weight": w}, "__author__": "CYBORGS", "matching_heuristics": True}, f
        )
    data = safe_load_pickle(str(good))
    assert np.array_equal(data["model"]["0.weight"], w)
    m = nn.Sequential(nn.Linear(3, 4))
    SafeCheckpointer(m).load(str(good))
    assert torch.equal(m[0].weight.detach(), torch.from_numpy(w))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "x": _Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pkl.*system"):
        safe_load_pickle(str(evil))


def test_atomic_write_keeps_old_file_on_failure(tmp_path) -> None:
    ck = SafeCheckpointer(_model(), str(tmp_path), save_to_disk=True)
    ck.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    class _Boom:
        def state_dict(self):
            raise RuntimeError("disk full")

    ck.add_checkpointable("boom", _Boom())
    with pytest.raises(RuntimeError, match="disk full"):
        ck.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
