"""The console ETA adds the bootstrap rounds still to come; the writer also writes on a timer."""

from __future__ import annotations

import logging

import numpy as np
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from cyborgs.bootstrap.hook import BootstrapHook
from cyborgs.bootstrap.round import RoundSettings
from cyborgs.config import add_cyborgs_config
from cyborgs.engine.writers import RoundAwareMetricPrinter, rounds_eta_text
from cyborgs.masks.store import MaskStore


def test_eta_text() -> None:
    assert rounds_eta_text(100, 0, None) == "0:01:40"
    assert rounds_eta_text(100, 2, 30.0) == "0:02:40 (incl. 2 bootstrap rounds)"
    assert rounds_eta_text(100, 1, None) == (
        "0:01:40 + 1 bootstrap round (time unknown until the first one)"
    )


class _Trainer:
    def __init__(self, max_iter: int) -> None:
        self.iter, self.max_iter, self.model = 0, max_iter, None

    def restart_data_loader(self, iteration: int) -> None:
        pass


def _round(model, settings, dicts, store, round_id, *, iteration, world_size, rank):
    for d in dicts:
        store.write(round_id, d["image_id"], np.zeros((2, 2), np.uint8))
    return {"k_values": [2], "time_s": 0.1, "images": len(dicts), "bytes": 10}


def test_pending_rounds_and_printed_eta(tmp_path, caplog) -> None:
    # 3 iterations/epoch, 12 iterations; warm-up 1 epoch, rounds every 2: epochs 1 and 2
    dicts = [{"image_id": i, "file_name": f"missing{i}.png"} for i in range(4)]
    settings = RoundSettings.from_cfg(add_cyborgs_config(get_cfg()))
    hook = BootstrapHook(settings=settings, round_fn=_round,
                         datasets=[("d", dicts, MaskStore(str(tmp_path)))],
                         iters_per_epoch=3, warmup_epochs=1, period_epochs=2)  # fmt: skip
    hook.trainer = trainer = _Trainer(12)
    assert hook.scheduled_epochs() == [1, 2]
    assert hook.pending_rounds(0) == (2, None)  # nothing measured yet
    printer = RoundAwareMetricPrinter(12, hook.pending_rounds)
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(0, 3):
            trainer.iter = storage.iter = it
            storage.put_scalars(time=2.0, data_time=0.1)
            hook.after_step()  # round 1 after iteration 2
        n, per_round = hook.pending_rounds(2)
        assert n == 1 and per_round is not None and per_round > 0
        with caplog.at_level(logging.INFO, logger="detectron2.utils.events"):
            printer.write()
        # 9 iterations left at 2 s (detectron2's median x remaining) + the measured round
        expected = rounds_eta_text(2.0 * 9, 1, per_round)
        assert f"eta: {expected}" in caplog.text
        for it in range(3, 6):
            trainer.iter = storage.iter = it
            hook.after_step()  # round 2 after iteration 5
        assert hook.pending_rounds(5)[0] == 0


def test_console_shows_only_the_loss_terms_of_the_current_step(caplog) -> None:
    """loss_vmf is computed in vMF epochs only: a later line must not repeat its old value."""
    printer = RoundAwareMetricPrinter(10)
    with EventStorage(0) as storage:
        storage.put_scalars(loss_vmf=6.005, loss_contrastive=3.0, time=1.0)
        storage.step()
        storage.put_scalars(loss_contrastive=2.5, time=1.0)  # iteration 1: no vMF term
        with caplog.at_level(logging.INFO, logger="detectron2.utils.events"):
            printer.write()
        line = caplog.records[-1].getMessage()
        assert "loss_contrastive: 2.75" in line and "loss_vmf" not in line  # median of 3, 2.5
        assert "lr: N/A" in line
        assert "loss_vmf" in storage.histories()  # the storage itself is left as it was


def test_writer_writes_every_period_and_on_a_timer(monkeypatch) -> None:
    from detectron2.utils.events import EventWriter

    import cyborgs.engine.writers as writers_mod
    from cyborgs.engine.writers import TimedPeriodicWriter

    class _Count(EventWriter):
        n = 0

        def write(self) -> None:
            self.n += 1

        def close(self) -> None:
            pass

    now = [0.0]
    monkeypatch.setattr(writers_mod.time, "perf_counter", lambda: now[0])
    w = _Count()
    hook = TimedPeriodicWriter([w], period=20, max_interval_s=60)
    hook.trainer = _Trainer(100)
    for it in range(19):  # fast steps: nothing until the period ends
        hook.trainer.iter = it
        now[0] += 1
        hook.after_step()
    assert w.n == 0
    hook.trainer.iter = 19
    hook.after_step()
    assert w.n == 1  # (19 + 1) % 20 == 0
    hook.trainer.iter = 20
    now[0] += 61  # one slow step: written although the period has not ended
    hook.after_step()
    assert w.n == 2


def test_console_line_format_and_stored_eta(monkeypatch, caplog) -> None:
    """detectron2 v0.6's metric line, hand-built: ETA = median iteration time x iterations left,
    loss medians over the window (only terms of this step), mean iteration time, mean data time
    of the last 20, the latest LR; ``eta_seconds`` (iterations only) stored for metrics.json."""
    import cyborgs.engine.writers as writers_mod

    monkeypatch.setattr(writers_mod.torch.cuda, "is_available", lambda: False)  # no max_mem
    printer = RoundAwareMetricPrinter(10)
    with EventStorage(0) as storage:
        for it, (t, loss) in enumerate([(1.0, 1.0), (3.0, 2.0), (2.0, 3.0)]):
            storage.iter = it
            storage.put_scalars(time=t, data_time=0.1 * (it + 1), loss_a=loss, epoch=0)
            storage.put_scalar("lr", 0.25 / (it + 1), smoothing_hint=False)
            if it == 0:
                storage.put_scalar("loss_b", 9.0)  # a phase-only term, absent at iteration 2
        with caplog.at_level(logging.INFO, logger="detectron2.utils.events"):
            printer.write()
        # median time 2 s x (10 - 2 - 1) iterations left = 14 s; times' mean 2; data mean 0.2
        assert caplog.records[-1].getMessage() == (
            " eta: 0:00:14  iter: 2  loss_a: 2  time: 2.0000  data_time: 0.2000  lr: 0.083333  "
        )
        assert storage.latest()["eta_seconds"] == (14.0, 2)
        storage.iter = 10  # training finished: nothing more to report
        printer.write()
        assert len([r for r in caplog.records if "iter:" in r.getMessage()]) == 1


def test_writer_hook_writes_and_closes_its_writers_after_training() -> None:
    from detectron2.utils.events import EventWriter

    from cyborgs.engine.writers import TimedPeriodicWriter

    class _Log(EventWriter):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def write(self) -> None:
            self.calls.append("write")

        def close(self) -> None:
            self.calls.append("close")

    w = _Log()
    hook = TimedPeriodicWriter([w], period=20)
    hook.trainer = _Trainer(100)
    hook.after_train()  # e.g. after a failed step: what it put is still written
    assert w.calls == ["write", "close"]
