"""``launch`` that also runs several processes on a CPU-only machine (METHOD.md §7).

detectron2 v0.6's ``launch`` asserts CUDA as soon as more than one process is asked for. With
CUDA we call it unchanged; without CUDA we spawn the processes ourselves with the gloo backend
and repeat detectron2's per-process setup (the machine-local process group, ``synchronize``),
so ``comm.get_local_rank()`` etc. behave exactly as under detectron2.

detectron2 v0.6 has no public way to install the local group: ``comm.get_local_rank`` /
``get_local_size`` read the module variable ``comm._LOCAL_PROCESS_GROUP``, which only its own
CUDA-only ``_distributed_worker`` assigns (later releases add ``comm.create_local_process_group``).
So ``_cpu_worker`` assigns it the same way, and nothing else here touches it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "find_free_port", "launch", "launch_from_args"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
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
    if torch.cuda.is_available() or world_size == 1:
        d2_launch(
            main_func,
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
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


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
    main_func(*args)
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
    ``default_argument_parser`` (``--num-gpus --num-machines --machine-rank --dist-url``);
    ``main_func`` receives ``args``."""
    print("Command Line Args:", args)
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
