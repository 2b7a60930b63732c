"""``launch`` that also runs several processes on a CPU-only machine (METHOD.md §7).

detectron2 v0.6's ``launch`` asserts CUDA as soon as more than one process is asked for. With
CUDA we call it unchanged; without CUDA we spawn the processes ourselves with the gloo backend
and repeat detectron2's per-process setup (the machine-local process group, ``synchronize``),
so ``comm.get_local_rank()`` etc. behave exactly as under detectron2.

detectron2 v0.6 has no public way to install the local group: ``comm.get_local_rank`` /
``get_local_size`` read the module variable ``comm._LOCAL_PROCESS_GROUP``, which only its own
CUDA-only ``_distributed_worker`` assigns (later releases add ``comm.create_local_process_group``).
So ``_cpu_worker`` assigns it the same way, and nothing else here touches it.

Cluster runs (README "Running on a cluster"):

* started by ``torchrun`` or a scheduler task per GPU (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT`` in the environment, as ``torchrun`` and
  ``submitit.helpers.TorchDistributedEnvironment().export()`` set them), the process joins that
  group (``env://``) instead of spawning its own;
* the process-group timeout (``--dist-timeout``, default 5 minutes) bounds every collective; a
  heartbeat thread per rank (a counter in the group's store) lets a rank whose collective timed
  out name the ranks that stopped responding (gloo's error names none);
* the CPU launcher forwards the preemption signals it receives to its processes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = [
    "DEFAULT_TIMEOUT",
    "StalledRankError",
    "add_cluster_arguments",
    "env_world",
    "find_free_port",
    "launch",
    "launch_from_args",
]

# Long enough for the slowest rank-0-only work between collectives (a checkpoint, a bootstrap
# round's manifest), short enough that a frozen rank is reported in minutes, not half an hour.
DEFAULT_TIMEOUT = timedelta(minutes=5)
logger = logging.getLogger(__name__)


def find_free_port() -> int:
    """A free TCP port on localhost (it may be taken again before use; good enough locally)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Same arguments as ``detectron2.engine.launch``; ``num_gpus_per_machine`` counts
    processes per machine (CPU processes when CUDA is absent)."""
    world_size = num_machines * num_gpus_per_machine
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1"
        )
    if env_world() is not None:
        _env_worker(main_func, args, timeout)
        return
    if torch.cuda.is_available() or world_size == 1:
        d2_launch(
            _Monitored(main_func, timeout) if world_size > 1 else main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto (or none) only works on one machine")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    logger.info(f"CUDA absent: launching {num_gpus_per_machine} CPU processes (gloo) at {dist_url}")
    ctx = mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        join=False,
        start_method="spawn",
    )
    with _forward_signals([p.pid for p in ctx.processes]):
        # a failed process: the others get a few seconds, then SIGTERM, then SIGKILL
        while not ctx.join(grace_period=5):
            pass


class _forward_signals:
    """In the launching process: pass the preemption signals (those installed by
    :mod:`cyborgs.utils.preemption` in this process, else SIGTERM and SIGUSR1) on to the
    workers, which checkpoint and exit; the launcher itself keeps waiting for them."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.old: dict[int, Any] = {}

    def _forward(self, signum: int, frame: Any) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def __enter__(self) -> _forward_signals:
        from cyborgs.utils import preemption

        if threading.current_thread() is threading.main_thread():
            nums = preemption.installed_signals() if preemption.configured() else None
            if nums is None:
                nums = preemption.parse_signals(preemption.DEFAULT_SIGNALS)
            for s in nums:
                self.old[s] = signal.signal(s, self._forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_procs_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    # Same local group as detectron2's _distributed_worker: every rank must create every
    # machine's group (new_group is collective), and keep its own machine's.
    local_group = None
    num_machines = world_size // num_procs_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_procs_per_machine, (i + 1) * num_procs_per_machine))
        pg = dist.new_group(ranks_on_i)
        if i == machine_rank:
            local_group = pg
    # No public setter in detectron2 v0.6 (module docstring).
    comm._LOCAL_PROCESS_GROUP = local_group
    # Avoids a first-collective timeout on slow starters (detectron2 does the same).
    comm.synchronize()
    _Monitored(main_func, timeout)(*args)
    # Tear down deliberately: all ranks done (barrier), then the local group before the
    # default one. Leaving gloo groups alive at interpreter exit, or destroying one while a
    # peer is still in a collective, intermittently aborts a worker with "terminate called
    # without an active exception" (SIGABRT; seen in 1 of ~5 runs before this order).
    comm.synchronize()
    comm._LOCAL_PROCESS_GROUP = None
    dist.destroy_process_group(local_group)
    dist.destroy_process_group()


def launch_from_args(main_func: Callable[..., Any], args: Any) -> None:
    """``launch(main_func, ...)`` with the distributed options of detectron2's
    ``default_argument_parser`` (``--num-gpus --num-machines --machine-rank --dist-url``) and
    :func:`add_cluster_arguments`' ``--dist-timeout``; ``main_func`` receives ``args``."""
    print("Command Line Args:", args)
    seconds = getattr(args, "dist_timeout", None)
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=DEFAULT_TIMEOUT if seconds is None else timedelta(seconds=float(seconds)),
    )


def add_cluster_arguments(parser: Any) -> Any:
    """``--dist-timeout SECONDS`` and ``--preemption-signals LIST`` (the entry points)."""
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="process-group timeout: a rank that stops responding for this long makes the "
        "others fail, naming it (default %(default)g)",
    )
    parser.add_argument(
        "--preemption-signals",
        default="TERM,USR1",
        metavar="LIST",
        help="signals on which training finishes its step, writes a checkpoint and exits with "
        "status 143 (comma-separated; 'none': the signals keep their default action)",
    )
    return parser


def install_preemption_signals(args: Any) -> None:
    """In each training process: the handlers of ``--preemption-signals``."""
    from cyborgs.utils import preemption

    names = str(getattr(args, "preemption_signals", "TERM,USR1") or "")
    preemption.install(() if names.lower() in ("", "none") else names)


# ---- processes started by torchrun / a scheduler ----
def env_world() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local world size) from ``torchrun``'s environment, or
    None when the process was not started that way."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")):
        return None
    world = int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    return int(env["RANK"]), world, int(env["LOCAL_RANK"]), local_world


def _env_worker(main_func: Callable[..., Any], args: tuple, timeout: timedelta) -> None:
    rank, world, local_rank, local_world = env_world()  # type: ignore[misc]
    if world % local_world:
        raise ValueError(f"WORLD_SIZE {world} is not a multiple of LOCAL_WORLD_SIZE {local_world}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    os.environ.setdefault("MASTER_PORT", "29500")
    logger.info(f"joining the process group of the environment: rank {rank} of {world}")
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", init_method="env://", world_size=world,
        rank=rank, timeout=timeout,
    )  # fmt: skip
    local_group = None
    machine = rank // local_world
    for i in range(world // local_world):
        pg = dist.new_group(list(range(i * local_world, (i + 1) * local_world)))
        if i == machine:
            local_group = pg
    comm._LOCAL_PROCESS_GROUP = local_group  # no public setter in detectron2 v0.6 (docstring)
    comm.synchronize()
    try:
        _Monitored(main_func, timeout)(*args)
        comm.synchronize()
    finally:
        comm._LOCAL_PROCESS_GROUP = None
        if dist.is_initialized():
            dist.destroy_process_group()


# ---- a rank that stops responding ----
class StalledRankError(RuntimeError):
    """A collective timed out; the message names the ranks whose heartbeat stopped."""


def _is_timeout(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in text or "timeout" in text)


def _is_file_store(store: Any) -> bool:
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return isinstance(store, dist.FileStore)


class _Heartbeat:
    """A counter per rank in the process group's store, advanced by a daemon thread: a frozen
    process (SIGSTOP, a hung file system call holding it) stops advancing its counter."""

    def __init__(self, timeout: timedelta) -> None:
        from torch.distributed import distributed_c10d

        self.store = distributed_c10d._get_default_store()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.interval = min(10.0, max(0.2, timeout.total_seconds() / 8))
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cyborgs-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while True:
            try:
                self.store.set(f"cyborgs/heartbeat/{self.rank}", str(n))
            except Exception:  # noqa: BLE001 - the group is gone: nothing left to report
                return
            n += 1
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()

    def _read(self) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for r in range(self.world):
            key = f"cyborgs/heartbeat/{r}"
            out[r] = self.store.get(key).decode() if self.store.check([key]) else None
        return out

    def silent_ranks(self) -> list[int] | None:
        """Ranks whose counter did not move over ~3 heartbeat intervals (None: the store
        itself does not answer)."""
        result: list[list[int] | None] = [None]

        def probe() -> None:
            try:
                first = self._read()
                time.sleep(3 * self.interval)
                second = self._read()
            except Exception:  # noqa: BLE001
                return
            result[0] = [r for r in range(self.world) if r != self.rank and (
                second[r] is None or second[r] == first[r])]  # fmt: skip

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(6 * self.interval + 5)  # a store served by a frozen rank 0 never answers
        return result[0]

    def explain(self, e: BaseException) -> str:
        silent = self.silent_ranks()
        limit = f"the process-group timeout is {self.timeout.total_seconds():g} s (--dist-timeout)"
        if silent is None and _is_file_store(self.store):
            # every FileStore operation holds a lock on the one file: a rank frozen inside
            # one (its heartbeat, a barrier) blocks the store for all, so no rank can be named
            who = ("the rendezvous file store (a file:// --dist-url) does not answer: a rank "
                   "froze while holding its lock, or its file system hangs (a tcp:// "
                   "--dist-url lets the silent rank be named)")  # fmt: skip
        elif silent is None:
            who = ("the process group's store (served by rank 0, or the rendezvous) does not "
                   "answer: rank 0 is likely the one that stopped responding")  # fmt: skip
        elif silent:
            who = (f"rank(s) {', '.join(map(str, silent))} stopped responding (no heartbeat "
                   f"for {3 * self.interval:.1f} s): frozen, stopped, or blocked on a hung "
                   "file system, or its node is lost")  # fmt: skip
        else:
            who = ("every other rank is alive but did not join the collective in time (one is "
                   "slower than the timeout in some step, or the ranks diverged)")  # fmt: skip
        return f"rank {self.rank}: a collective timed out ({str(e).strip()[:200]}); {who}; {limit}"


class _Monitored:
    """``main_func`` with a heartbeat, and a collective timeout turned into a
    :class:`StalledRankError` naming the silent ranks (picklable for spawn)."""

    def __init__(self, main_func: Callable[..., Any], timeout: timedelta) -> None:
        self.main_func = main_func
        self.timeout = timeout

    def __call__(self, *args: Any) -> Any:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.main_func(*args)
        beat = _Heartbeat(self.timeout)
        try:
            return self.main_func(*args)
        except Exception as e:
            if not _is_timeout(e):
                raise
            message = beat.explain(e)
            logger.error(message)
            raise StalledRankError(message) from e
        finally:
            beat.stop()
