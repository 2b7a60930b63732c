"""A stop signal during training: finish the step, checkpoint, stop; resume is bit-exact.

The tiny stand-in pretraining of ``test_resume.py`` (3 iterations / epoch, 9 in all, periodic
checkpoints every 4): the signal arrives during iteration 4, in the middle of epoch 1, where no
periodic checkpoint falls. The run must stop after that step with ``model_0000004.pth`` holding
everything, and the resume must end bit for bit where the run that was never stopped ends.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from test_resume import _cfg, _final, _TinyTrainer

from cyborgs.engine.checkpoint import safe_load
from cyborgs.engine.launch import launch
from cyborgs.engine.preemption import PreemptionHook
from cyborgs.utils import preemption
from cyborgs.utils.preemption import Preempted


@pytest.fixture(autouse=True)
def _restore_signals():
    yield
    preemption.uninstall()


class _SignalDuring(HookBase):
    """Sends ``signum`` to this process in ``before_step`` of iteration ``it`` (on ``rank``):
    the signal arrives while that step runs."""

    def __init__(self, it: int, signum: int = signal.SIGTERM, rank: int | None = None) -> None:
        self.it, self.signum, self.rank = it, signum, rank

    def before_step(self) -> None:
        if self.trainer.iter == self.it and self.rank in (None, comm.get_rank()):
            os.kill(os.getpid(), self.signum)


def _run(cfg, signal_at: int | None = None, resume: bool = False, **signal_kw):
    seed_all_rng(100 + comm.get_rank())

    class T(_TinyTrainer):
        def build_hooks(self):
            ret = super().build_hooks()
            if signal_at is not None:
                ret.insert(0, _SignalDuring(signal_at, **signal_kw))
            return ret

    t = T(cfg)
    t.resume_or_load(resume=resume)
    stop = None
    try:
        t.train()
    except Preempted as e:
        stop = e
    return t, stop


def _same_weights(a, b) -> bool:
    sa, sb = a.unwrapped_model.state_dict(), b.unwrapped_model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_signal_mid_epoch_checkpoints_and_resume_is_exact(tmp_path) -> None:
    signum = signal.SIGUSR1  # SIGTERM in the two-process test
    straight, stop = _run(_final(_cfg(str(tmp_path / "a"))))
    assert stop is None and straight.iter == 9

    cfg = _final(_cfg(str(tmp_path / "b")))
    stopped, stop = _run(cfg, signal_at=4, signum=signum)
    # the step during which the signal came is finished and saved; nothing after it ran
    assert stop is not None and stop.iteration == 4 and stop.signum == signum
    assert stop.checkpoint == str(tmp_path / "b" / "model_0000004.pth")
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000004.pth"
    assert not (tmp_path / "b" / "model_final.pth").exists()
    saved = safe_load(stop.checkpoint)
    assert saved["iteration"] == 4 and "RNGStateHook" in saved["trainer"]["hooks"]
    assert not _same_weights(stopped, straight)

    preemption.clear()  # a new process would start without the request
    resumed, stop = _run(cfg, resume=True)
    assert stop is None and resumed.start_iter == 5
    assert _same_weights(resumed, straight)
    # metrics.json continues: no iteration twice, none of the uninterrupted run's missing
    it_a, it_b = (_metric_iterations(tmp_path / n / "metrics.json") for n in ("a", "b"))
    assert it_b == sorted(set(it_b)) and set(it_a) <= set(it_b) and 4 in it_b
    # so do the TensorBoard events (a second events file after the resume): per tag each step
    # once, in order, every step of the uninterrupted run, plus the stop's flush at 4
    steps_a, steps_b = (_event_steps(tmp_path / n) for n in ("a", "b"))
    assert len(list((tmp_path / "b").glob("events.out.tfevents.*"))) == 2
    assert steps_a and steps_b.keys() == steps_a.keys()
    for tag, steps in steps_b.items():
        assert steps == sorted(set(steps)), tag  # none twice, in order
        assert set(steps) <= {*steps_a[tag], 4}, tag
        # none missing; except the timing: detectron2's IterationTimer does not time the
        # first steps of a process (its warm-up), so a resumed run's first write has no "time"
        # (nor the ETA made from it)
        untimed = {5} if tag in ("time", "eta_seconds") else set()
        assert set(steps_a[tag]) - untimed <= set(steps), tag
    assert steps_b["total_loss"] == [2, 4, 5, 8]


def _metric_iterations(path) -> list[int]:
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()]


def _event_steps(folder) -> dict[str, list[int]]:
    """tag -> the step of every scalar in ``folder``'s events files, in the order written."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = [list(EventFileLoader(str(p)).Load()) for p in folder.glob("events.out.tfevents.*")]
    steps: dict[str, list[int]] = {}
    for events in sorted(files, key=lambda events: events[0].wall_time):  # in the order written
        for event in events:
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def test_signal_in_the_last_step_ends_the_run_normally(tmp_path) -> None:
    t, stop = _run(_final(_cfg(str(tmp_path / "c"))), signal_at=8)
    assert stop is None and (tmp_path / "c" / "model_final.pth").is_file()


def test_the_handler_only_records_and_the_hook_stops(tmp_path) -> None:
    from types import SimpleNamespace

    h = PreemptionHook()
    h.trainer = SimpleNamespace(iter=3, max_iter=10, checkpointer=None, _hooks=[])
    h.after_step()  # no request: nothing happens
    preemption.install("TERM")
    os.kill(os.getpid(), signal.SIGTERM)  # would end this process without the handler
    assert preemption.requested() == signal.SIGTERM
    with pytest.raises(Preempted, match="SIGTERM after iteration 3"):
        h.after_step()
    preemption.uninstall()
    assert signal.getsignal(signal.SIGTERM) is not preemption._handler
    with pytest.raises(ValueError, match="KILL"):
        preemption.parse_signals("TERM,KILL")
    assert preemption.parse_signals("term, SIGUSR1") == (signal.SIGTERM, signal.SIGUSR1)


def _worker(out_dir: str) -> None:
    """Both ranks: a straight run, a run where rank 1 alone gets the signal during iteration 4,
    and its resume; rank 0 reports what it saw."""
    rank = comm.get_rank()

    def cfg(name: str):
        c = _cfg(os.path.join(out_dir, name))
        c.SOLVER.IMS_PER_BATCH = 4
        return c

    straight, _ = _run(_final(cfg("a")))
    preemption.uninstall()
    c = _final(cfg("b"))
    stopped, stop = _run(c, signal_at=4, rank=1)
    saw = preemption.requested()
    preemption.uninstall()
    resumed, stop2 = _run(c, resume=True)
    preemption.uninstall()
    ckpt = safe_load(os.path.join(out_dir, "b", "model_0000004.pth")) if rank == 0 else {}
    report = {
        "stopped_at": None if stop is None else stop.iteration,
        "signal_seen_here": saw,
        "resumed_from": resumed.start_iter,
        "exact": _same_weights(straight, resumed),
        "moved": not _same_weights(straight, stopped),
        "rng_ranks": len(ckpt["trainer"]["hooks"]["RNGStateHook"]["ranks"]) if ckpt else None,
        "stop2": stop2 is not None,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_two_processes_stop_together_and_resume_exactly(tmp_path) -> None:
    launch(
        _worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),),
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # rank 0 never got the signal, yet stopped after the same step as rank 1
    assert r0["signal_seen_here"] is None and r1["signal_seen_here"] == signal.SIGTERM
    assert r0["stopped_at"] == r1["stopped_at"] == 4
    assert r0["rng_ranks"] == 2  # both ranks' RNG states in the off-period checkpoint
    assert r0["resumed_from"] == r1["resumed_from"] == 5
    assert r0["moved"] and r0["exact"] and r1["exact"]
    assert not r0["stop2"] and not r1["stop2"]
