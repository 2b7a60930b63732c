"""Checkpoints: weights-only round trip, refusal of pickled objects, atomic writes."""

from __future__ import annotations

import os
import pickle
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from cyborgs.engine.checkpoint import (
    NotACheckpointError,
    PeriodicCheckpointer,
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


# ---- recovery: corrupt latest checkpoint, stale temp files, pruning across restarts ----
def _saved_run(tmp_path, iterations=(4, 9)) -> tuple[nn.Module, dict[int, dict]]:
    """Checkpoints model_000000{i}.pth, each with distinct weights; last_checkpoint -> the last."""
    m = _model()
    states = {}
    ck = SafeCheckpointer(m, str(tmp_path), save_to_disk=True)
    for i in iterations:
        with torch.no_grad():
            m[0].weight.fill_(float(i))
        ck.save(f"model_{i:07d}", iteration=i)
        states[i] = {k: v.clone() for k, v in m.state_dict().items()}
    return m, states


@pytest.fixture
def checkpoint_log(caplog):
    """Warnings of cyborgs.engine.checkpoint, whatever propagation setup_logger left behind."""
    import logging

    log = logging.getLogger("cyborgs.engine.checkpoint")
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="cyborgs.engine.checkpoint")
    yield caplog
    log.removeHandler(caplog.handler)


class _MainLoad(DetectionCheckpointer):
    """``DetectionCheckpointer.load`` as detectron2 main has it (after v0.6): the field is set
    before loading, cleared only after a successful load, and must be unset on entry."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._parsed_url_during_load = None

    def load(self, path, *args, **kwargs):
        assert self._parsed_url_during_load is None
        if path:
            self._parsed_url_during_load = urlparse(path)
        ret = super().load(path, *args, **kwargs)
        self._parsed_url_during_load = None
        return ret


class _SafeCheckpointerOnMain(SafeCheckpointer, _MainLoad):
    """SafeCheckpointer over main's ``load`` (MRO: ours, main's, v0.6's)."""


@pytest.mark.parametrize("checkpointer", [SafeCheckpointer, _SafeCheckpointerOnMain])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "empty pointer"])
def test_resume_falls_back_to_newest_complete_checkpoint(
    tmp_path, checkpoint_log, damage, checkpointer
):
    _, states = _saved_run(tmp_path, (4, 9, 14))
    latest = tmp_path / "model_0000014.pth"
    if damage == "truncate":  # as a crash mid-copy or a full disk leaves it
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    elif damage == "garbage":
        latest.write_bytes(b"\x00" * 100)
    elif damage == "empty pointer":
        (tmp_path / "last_checkpoint").write_text("")
    else:
        latest.unlink()
    (tmp_path / "model_0000009.pth").write_bytes(b"PK\x03\x04 truncated too")  # skipped as well
    m2 = _model()
    ck = checkpointer(m2, str(tmp_path))
    ret = ck.resume_or_load("", resume=True)
    # an empty pointer: the newest file that loads is the intact model_0000014.pth
    good, bad = (14, tmp_path / "last_checkpoint") if damage == "empty pointer" else (4, latest)
    assert ret["iteration"] == good
    for k, v in states[good].items():
        assert torch.equal(m2.state_dict()[k], v), k
    warning = [r.getMessage() for r in checkpoint_log.records if r.levelname == "WARNING"][-1]
    assert str(tmp_path / f"model_{good:07d}.pth") in warning and str(bad) in warning
    ck.load(str(tmp_path / f"model_{good:07d}.pth"))  # and it can load again afterwards


def _extended_run(tmp_path, final_at: int) -> dict[int, dict]:
    """A run that ended (model_final at ``final_at``), was extended and wrote 2499 and 2999."""
    m = _model()
    ck = SafeCheckpointer(m, str(tmp_path), save_to_disk=True)
    states = {}
    for name, it in (("model_0001999", 1999), ("model_final", final_at), ("model_0002499", 2499)):
        with torch.no_grad():
            m[0].weight.fill_(float(it if name != "model_final" else -it))
        ck.save(name, iteration=it)
        states[name] = {k: v.clone() for k, v in m.state_dict().items()}
    ck.save("model_0002999", iteration=2999)
    return states


def test_resume_of_an_extended_run_prefers_the_newer_periodic_checkpoint(tmp_path, checkpoint_log):
    # model_final (iteration 1999) must not win over model_0002499 just by its name.
    states = _extended_run(tmp_path, final_at=1999)
    truncated = tmp_path / "model_0002999.pth"
    truncated.write_bytes(truncated.read_bytes()[:100])
    m2 = _model()
    ret = SafeCheckpointer(m2, str(tmp_path)).resume_or_load("", resume=True)
    assert ret["iteration"] == 2499
    for k, v in states["model_0002499"].items():
        assert torch.equal(m2.state_dict()[k], v), k
    warning = [r.getMessage() for r in checkpoint_log.records if r.levelname == "WARNING"][-1]
    assert str(tmp_path / "model_0002499.pth") in warning and str(truncated) in warning


def test_resume_falls_back_to_model_final_when_it_holds_the_newest_iteration(tmp_path):
    # A final newer than every loadable periodic one (and a tie goes to it, written later).
    for final_at in (2749, 2499):
        states = _extended_run(tmp_path / str(final_at), final_at=final_at)
        truncated = tmp_path / str(final_at) / "model_0002999.pth"
        truncated.write_bytes(b"")
        m2 = _model()
        ck = SafeCheckpointer(m2, str(tmp_path / str(final_at)))
        assert ck.resume_or_load("", resume=True)["iteration"] == final_at
        for k, v in states["model_final"].items():
            assert torch.equal(m2.state_dict()[k], v), k


def test_unreadable_model_final_is_skipped_in_the_fallback(tmp_path, checkpoint_log):
    _extended_run(tmp_path, final_at=2749)
    (tmp_path / "model_final.pth").write_bytes(b"\x00" * 10)
    (tmp_path / "model_0002999.pth").unlink()
    ret = SafeCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert ret["iteration"] == 2499
    assert f"Cannot resume from {tmp_path / 'model_final.pth'} either" in checkpoint_log.text


def test_resume_with_no_complete_checkpoint_says_so(tmp_path) -> None:
    _saved_run(tmp_path, (4,))
    (tmp_path / "model_0000004.pth").write_text("not a checkpoint")
    with pytest.raises(NotACheckpointError, match=r"model_0000004\.pth.*without\s+--resume"):
        SafeCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)


def test_resume_never_skips_an_unsafe_latest_checkpoint(tmp_path) -> None:
    _saved_run(tmp_path, (4, 9))
    torch.save({"model": {}, "x": _Evil()}, tmp_path / "model_0000009.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"model_0000009\.pth.*system"):
        SafeCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)


@pytest.mark.parametrize("planted", [".model_0000009.pth", ".pth", "sub\\model_0000009.pth"])
def test_last_checkpoint_naming_a_hidden_or_nested_file_is_refused(tmp_path, planted) -> None:
    """Ours only ever name ``model_*.pth``: a dot-name (the atomic writer's temp-file prefix, a
    hidden file) or a Windows path is refused even when such a .pth file is really there."""
    _saved_run(tmp_path, (4, 9))
    (tmp_path / planted).write_bytes((tmp_path / "model_0000009.pth").read_bytes())
    (tmp_path / "last_checkpoint").write_text(planted)
    ck = SafeCheckpointer(_model(), str(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match=r"last_checkpoint names .*must name a \.pth"):
        ck.get_checkpoint_file()
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")  # the control: accepted
    assert ck.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")


def _hook(ck: SafeCheckpointer, keep: int | None) -> PeriodicCheckpointer:
    from types import SimpleNamespace

    hook = PeriodicCheckpointer(ck, 1, max_to_keep=keep)
    hook.trainer = SimpleNamespace(max_iter=1000, iter=0)
    hook.before_train()
    return hook


def test_stale_temp_files_removed_on_start(tmp_path) -> None:
    m, _ = _saved_run(tmp_path, (4,))
    stale = [".model_0000009.pth.k2j3_x9a.tmp", ".last_checkpoint.abc123.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"partial")
    # A user's files that match the temp-file pattern but name no file of the checkpointer's
    # (the audit's case: a new run into a folder that is not a run deleted them).
    users = [".notes.txt.draft.tmp", ".config.yaml.abc123.tmp"]
    for name in users:
        (tmp_path / name).write_bytes(b"the user's " + name.encode())
    kept = ["notes.tmp", "model_0000004.pth", "last_checkpoint", ".hidden", *users]
    (tmp_path / "notes.tmp").write_text("a user's file, not one of ours")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / ".r.png.abc.tmp").write_bytes(b"")  # subdirectories: not ours to tidy
    _hook(SafeCheckpointer(m, str(tmp_path), save_to_disk=True), keep=3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(kept)
    assert (tmp_path / "masks" / ".r.png.abc.tmp").exists()
    assert all((tmp_path / n).read_bytes() == b"the user's " + n.encode() for n in users)


def test_checkpoints_to_keep_counts_checkpoints_from_before_a_restart(tmp_path) -> None:
    m, _ = _saved_run(tmp_path, (1, 2, 3, 4, 5))
    (tmp_path / "model_final.pth").write_bytes((tmp_path / "model_0000001.pth").read_bytes())
    hook = _hook(SafeCheckpointer(m, str(tmp_path), save_to_disk=True), keep=2)
    hook.step(6)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000005.pth", "model_0000006.pth", "model_final.pth"
    ]  # fmt: skip


def test_rewritten_checkpoint_counts_once(tmp_path) -> None:
    # resumed from iteration 3 after a crash: 4 and 5 are written again, never pruned as "old"
    m, _ = _saved_run(tmp_path, (3, 4, 5))
    hook = _hook(SafeCheckpointer(m, str(tmp_path), save_to_disk=True), keep=1)
    hook.step(4)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000004.pth"]
    hook.step(5)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000005.pth"]
