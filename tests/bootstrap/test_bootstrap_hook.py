"""BootstrapHook: schedule, store switching, metrics, and exact resume (fake trainer)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from detectron2.utils.events import EventStorage

from cyborgs.bootstrap.hook import BootstrapHook, BootstrapRoundError, due_epochs
from cyborgs.bootstrap.round import RoundSettings
from cyborgs.masks.bootstrap import BootstrapMaskSource
from cyborgs.masks.store import MaskStore

DICTS = [{"image_id": i, "file_name": f"{i}.png", "height": 16, "width": 16} for i in range(5)]


SETTINGS = RoundSettings(
    features=("res3.2",), group_size=16, k_min=2, k_max=8, kmeans_iters=5, backend="torch",
    input_size=0, border_pad=0, batch_size=4, seed=0, crf=False, num_workers=0,
    max_aspect_ratio=10.0,
)  # fmt: skip


class _FakeRounds:
    """Stands in for bootstrap_shard: writes maps filled with the round id; can crash once
    mid-round."""

    def __init__(self, crash_on: int | None = None):
        self.calls: list[tuple[int, int]] = []
        self.crash_on = crash_on

    def __call__(self, model, settings, dicts, store, round_id, *, iteration, world_size, rank):
        assert settings is SETTINGS
        self.calls.append((round_id, iteration))
        for n, d in enumerate(dicts[rank::world_size]):
            if round_id == self.crash_on and n == 2:
                self.crash_on = None
                raise RuntimeError("simulated crash")
            store.write(round_id, d["image_id"], np.full((2, 2), round_id % 256, np.uint8))
        return {"k_values": [3, 5], "time_s": 0.5, "images": len(dicts), "bytes": 100}


class _Trainer:
    def __init__(self, max_iter):
        self.iter, self.max_iter, self.model = 0, max_iter, None
        self.restarts: list[int] = []

    def restart_data_loader(self, iteration):
        self.restarts.append(iteration)


def _hook(store, rounds, warmup=2, period=4, ipe=3, quality=None):
    return BootstrapHook(
        settings=SETTINGS,
        round_fn=rounds,
        datasets=[("demo", DICTS, store)],
        iters_per_epoch=ipe,
        warmup_epochs=warmup,
        period_epochs=period,
        quality_fns={"demo": quality} if quality else None,
    )


def _train(hook, trainer, start, stop):
    hook.trainer = trainer
    with EventStorage(start) as storage:
        trainer.storage = storage
        trainer.iter = start
        hook.before_train()
        for it in range(start, stop):
            trainer.iter = it
            storage.iter = it
            hook.after_step()
    return storage


def test_due_epochs():
    assert due_epochs(5, 100, 800)[:3] == [5, 100, 200] and due_epochs(5, 100, 800)[-1] == 700
    assert due_epochs(5, 0, 800) == [5]
    assert due_epochs(0, 10, 25) == [0, 10, 20]
    assert due_epochs(5, 10, 5) == []  # warm-up is the whole run


def test_schedule_switches_rounds_and_logs(tmp_path):
    store = MaskStore(str(tmp_path))
    src = BootstrapMaskSource(str(tmp_path))
    rounds = _FakeRounds()
    hook = _hook(store, rounds, quality=lambda s, r: {"miou": 0.25 + r / 100})
    trainer = _Trainer(max_iter=3 * 13)  # 13 epochs: rounds at 2, 4, 8, 12
    seen = []
    hook.trainer = trainer
    with EventStorage(0) as storage:
        trainer.storage = storage
        hook.before_train()
        for it in range(trainer.max_iter):
            trainer.iter = storage.iter = it
            seen.append(int(src({"image_id": 3}, np.zeros((4, 4, 3), np.uint8))[0, 0]))
            hook.after_step()
    assert [r for r, _ in rounds.calls] == [2, 4, 8, 12]
    assert [i for _, i in rounds.calls] == [6, 12, 24, 36]
    assert trainer.restarts == [6, 12, 24, 36]  # loader rebuilt where the new masks start
    assert hook.state_dict() == {"completed": [2, 4, 8, 12]}
    # whole-image (0) masks through the warm-up, then each round from its epoch on
    assert seen[:6] == [0] * 6 and seen[6:12] == [2] * 6 and seen[12] == 4 and seen[-1] == 12
    assert store.rounds() == [2, 4, 8, 12] and store.current_round() == 12
    man = store.manifest(12)
    assert man["k_histogram"] == {"3": 1, "5": 1} and man["epoch"] == 12 and man["iteration"] == 36
    hist = storage.history("bootstrap/mask_miou").values()
    assert [v for v, _ in hist] == pytest.approx([0.27, 0.29, 0.33, 0.37])
    assert storage.history("bootstrap/k_mean").latest() == 4.0
    assert storage.history("bootstrap/images_per_s").latest() == pytest.approx(10.0)
    assert storage.history("bootstrap/bytes_per_image").latest() > 0
    assert [v for v, _ in storage.history("bootstrap/round").values()] == [2, 4, 8, 12]


def test_period_zero_only_post_warmup_round(tmp_path):
    rounds = _FakeRounds()
    _train(_hook(MaskStore(str(tmp_path)), rounds, warmup=1, period=0), _Trainer(30), 0, 30)
    assert [r for r, _ in rounds.calls] == [1]


def test_warmup_zero_bootstraps_before_training(tmp_path):
    rounds = _FakeRounds()
    _train(_hook(MaskStore(str(tmp_path)), rounds, warmup=0, period=4), _Trainer(15), 0, 15)
    assert [r for r, _ in rounds.calls] == [0, 4]


def test_crash_mid_round_restarts_it_on_resume(tmp_path):
    store = MaskStore(str(tmp_path))
    rounds = _FakeRounds(crash_on=4)
    hook = _hook(store, rounds)
    trainer = _Trainer(3 * 13)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(hook, trainer, 0, trainer.max_iter)
    assert store.current_round() == 2 and store.rounds() == [2]  # partial round 4 unused
    checkpoint = hook.state_dict()  # a checkpoint taken at iteration 12 (end of epoch 4)
    assert checkpoint == {"completed": [2]}
    # Resume: a fresh hook loads the state; before_train redoes round 4 in full.
    hook2 = _hook(store, rounds)
    hook2.load_state_dict(checkpoint)
    _train(hook2, _Trainer(3 * 13), 12, 3 * 13)
    assert [r for r, _ in rounds.calls] == [2, 4, 4, 8, 12]
    assert store.rounds() == [2, 4, 8, 12] and store.manifest(4)["num_images"] == 5


def test_resume_restores_checkpoint_round_after_later_round_finished(tmp_path):
    store = MaskStore(str(tmp_path))
    rounds = _FakeRounds()
    hook = _hook(store, rounds)
    _train(hook, _Trainer(3 * 13), 0, 13)  # rounds 2 and 4 done
    assert store.current_round() == 4
    # The last checkpoint (iteration 9, epoch 3) knew only round 2: resume uses round 2's masks
    # and reruns round 4 when epoch 4 ends.
    hook2 = _hook(store, rounds)
    hook2.load_state_dict({"completed": [2]})
    hook2.trainer = _Trainer(3 * 13)
    hook2.trainer.iter = 9
    with EventStorage(9) as st:
        hook2.trainer.storage = st
        hook2.before_train()
        assert store.current_round() == 2
        for it in range(9, 12):
            hook2.trainer.iter = it
            hook2.after_step()
    assert [r for r, _ in rounds.calls] == [2, 4, 4]
    assert store.current_round() == 4
    # A checkpoint that records a round missing on disk is a clear error.
    hook3 = _hook(MaskStore(str(tmp_path / "other")), rounds)
    hook3.load_state_dict({"completed": [2]})
    with pytest.raises(BootstrapRoundError, match="FileNotFoundError: .*recorded as complete"):
        _train(hook3, _Trainer(30), 9, 10)


def test_with_real_round_runner(tmp_path, round_settings):
    """The default round_fn (bootstrap_shard) under the hook, and the hook's manifest in the
    offline round's format (same keys, settings included)."""
    from PIL import Image
    from test_round import _ColourNet  # noqa: E402  (rootdir-style test module)

    from cyborgs.bootstrap.round import run_bootstrap_round

    dicts = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        img = np.zeros((32, 32, 3), np.uint8)
        img[:, 16:] = 200
        Image.fromarray(img).save(p)
        dicts.append({"file_name": str(p), "image_id": i, "height": 32, "width": 32})
    store = MaskStore(str(tmp_path / "store"))
    settings = round_settings(group_size=2, k_min=2, k_max=4, backend="torch", input_size=0)
    hook = BootstrapHook(settings=settings, datasets=[("d", dicts, store)], warmup_epochs=1,
                         period_epochs=0)  # fmt: skip
    trainer = _Trainer(6)
    trainer.iters_per_epoch = 2  # taken from the trainer (CyborgsTrainer has it)
    trainer.model = _ColourNet()
    _train(hook, trainer, 0, 6)
    assert store.rounds() == [1]
    man = store.manifest(1)
    assert man["features"] == ["res3.2"] and man["k_per_group"] == [2, 2]
    assert man["settings"] == settings.manifest_fields() and man["settings"]["k_max"] == 4
    assert man["epoch"] == 1 and man["iteration"] == 2
    # the stand-in's 8x8 mean pooling centres cell i on pixel 8i + 3.5: half a cell
    assert man["cell_grid"]["centre"] == [0.5, 0.5] and man["cell_grid"]["stride"] == 8
    m = store.read(0)
    assert m.shape == (4, 4) and (m[:, :2] != m[:, 2:]).all()

    offline = MaskStore(str(tmp_path / "offline"))
    run_bootstrap_round(_ColourNet(), settings, dicts, offline, 1, epoch=1, iteration=2)
    off = offline.manifest(1)
    assert set(off) == set(man)
    volatile = {"created", "time_s"}
    assert {k: v for k, v in off.items() if k not in volatile} == {
        k: v for k, v in man.items() if k not in volatile
    }


def _two_rounds(tmp_path):
    """Rounds 2 and 4 finished; the checkpoint (end of epoch 4) records both."""
    store = MaskStore(str(tmp_path))
    rounds = _FakeRounds()
    _train(_hook(store, rounds), _Trainer(3 * 13), 0, 13)
    assert store.rounds() == [2, 4] and [r for r, _ in rounds.calls] == [2, 4]
    return store, rounds


def _resume_at_12(store, rounds):
    hook = _hook(store, rounds)
    hook.load_state_dict({"completed": [2, 4]})
    trainer = _Trainer(3 * 13)
    _train(hook, trainer, 12, 13)
    return trainer


@pytest.mark.parametrize("content", [b"\x00\x01garbage", b'{"round": "four"}', b""])
def test_resume_repairs_a_garbage_pointer_from_the_checkpoint(tmp_path, content):
    store, rounds = _two_rounds(tmp_path)
    with open(store.pointer_path, "wb") as f:
        f.write(content)
    _resume_at_12(store, rounds)
    assert store.current_round() == 4  # the checkpoint's latest round
    assert [r for r, _ in rounds.calls] == [2, 4]  # intact round: not redone
    assert BootstrapMaskSource(str(tmp_path))({"image_id": 1}, np.zeros((4, 4, 3))).max() == 4


@pytest.mark.parametrize("damage", ["delete_map", "truncate_map", "corrupt_manifest"])
def test_resume_redoes_a_damaged_round(tmp_path, damage):
    store, rounds = _two_rounds(tmp_path)
    png = os.path.join(store.round_dir(4), "part-000.bin")  # the file holding the maps
    if damage == "delete_map":
        os.remove(png)
    elif damage == "truncate_map":
        with open(png, "r+b") as f:
            f.truncate(10)
    else:
        with open(os.path.join(store.round_dir(4), "manifest.json"), "wb") as f:
            f.write(b"{garbage")
    trainer = _resume_at_12(store, rounds)
    assert [r for r, _ in rounds.calls] == [2, 4, 4]  # redone from the checkpoint's weights
    assert store.verify_round(4) == [] and store.current_round() == 4
    np.testing.assert_array_equal(store.read(3), np.full((2, 2), 4, np.uint8))
    assert trainer.restarts == [12]  # loader rebuilt on the new masks


def test_nonfinite_round_names_the_last_good_checkpoint(tmp_path):
    from cyborgs.utils.nonfinite import NonFiniteLossError

    out = tmp_path / "out"
    out.mkdir()
    for n in ("model_0000002.pth", "model_0000005.pth"):
        (out / n).write_bytes(b"")

    def diverged(model, settings, dicts, store, round_id, *, iteration, world_size, rank):
        raise NonFiniteLossError(f"Non-finite bootstrap features in round {round_id}", iteration)

    hook = _hook(MaskStore(str(tmp_path / "m")), diverged)
    trainer = _Trainer(3 * 13)
    trainer.cfg = type("Cfg", (), {"OUTPUT_DIR": str(out)})()
    with pytest.raises(NonFiniteLossError, match="round 2") as e:
        _train(hook, trainer, 0, 13)
    assert e.value.iteration == 6  # the round after epoch 2 precedes step 6
    assert f"Last good checkpoint: {out / 'model_0000002.pth'}" in str(e.value)


def test_resume_before_the_first_round_beside_later_rounds_writes_the_pointer(tmp_path):
    # A missing pointer beside completed rounds makes the mask source stop (it reads as a
    # deleted pointer); a resume from a warm-up checkpoint writes one at no round instead.
    store, rounds = _two_rounds(tmp_path)
    os.remove(store.pointer_path)
    hook = _hook(store, rounds)
    hook.load_state_dict({"completed": []})
    _train(hook, _Trainer(3 * 13), 3, 4)  # epoch 1: still in the warm-up
    assert os.path.exists(store.pointer_path) and store.current_round() is None
    assert not BootstrapMaskSource(str(tmp_path))({"image_id": 1}, np.zeros((4, 4, 3))).any()


def test_data_set_ids_sharing_a_mask_key_are_refused_up_front(tmp_path):
    """Checked once when the hook is built, not in every round: int 3 and str "3" are one key."""
    dicts = [*DICTS, {"image_id": "3", "file_name": "dup.png", "height": 16, "width": 16}]
    with pytest.raises(ValueError, match=r"3\.png and dup\.png have the same image_id"):
        BootstrapHook(settings=SETTINGS, round_fn=_FakeRounds(),
                      datasets=[("demo", dicts, MaskStore(str(tmp_path)))],
                      iters_per_epoch=3, warmup_epochs=2, period_epochs=4)  # fmt: skip


def test_a_round_leaves_the_global_rng_states_alone(tmp_path):
    """The step before a round is checkpointed before and again after it, and on several ranks
    both saves hold the states gathered before it: a round that drew from the global RNGs
    would make a resume from the second save differ from the run that went on."""
    import random

    import torch

    from cyborgs.engine.hooks import capture_rng_state

    fake = _FakeRounds()

    def drawing(*args, **kwargs):
        torch.rand(3), np.random.rand(), random.random()
        return fake(*args, **kwargs)

    hook = _hook(MaskStore(str(tmp_path)), drawing, warmup=1, period=0)
    hook.trainer = trainer = _Trainer(3 * 4)
    with EventStorage(0) as storage:
        trainer.storage = storage
        hook.before_train()
        trainer.iter = storage.iter = 2  # the last step of epoch 0: round 1 follows
        before = capture_rng_state()
        hook.after_step()
    after = capture_rng_state()
    assert [r for r, _ in fake.calls] == [1]
    assert torch.equal(before["torch"], after["torch"])
    assert torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
    assert before["python"] == after["python"]
