"""Multi-process runs on CPUs too: detectron2's `launch` and `create_ddp_model` for gloo.

detectron2 v0.6 spawns one process per GPU with NCCL and asserts CUDA; later detectron2
versions fall back to gloo on machines without GPUs, with the same `--num-gpus N`. This
does the same here: on CUDA the GPU path is detectron2's own, unchanged; on the CPU
(MODEL.DEVICE "cpu", or no CUDA) N processes are spawned with the gloo backend, ranks and
the local process group set up as detectron2 sets them, so `comm`, the samplers, the
evaluator's gather and DDP work as on GPUs.
"""
import logging
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def launch(main_func, num_processes_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT, *, device):
    """detectron2's `launch` (same arguments, `num_gpus_per_machine` renamed) with a CPU path.

    Args:
        device: the config's MODEL.DEVICE (required: the path follows the configured device).
            "cuda..." with CUDA available: detectron2's launch (NCCL, one GPU per process).
            Otherwise `num_processes_per_machine` CPU processes on gloo; each uses
            cpu_count / processes threads unless OMP_NUM_THREADS is set.
    """
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return d2_launch(main_func, num_processes_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
    if num_processes_per_machine < 1 or num_machines < 1:
        raise ValueError(f"need at least one process and one machine, got {num_processes_per_machine} "
                         f"processes on {num_machines} machines")
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError(f"a {num_machines}-machine run needs an explicit --dist-url reachable by all machines")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_cpu_worker, nprocs=num_processes_per_machine, daemon=False,
             args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout):
    if "OMP_NUM_THREADS" not in os.environ:
        # N processes sharing the cores: each taking all of them would oversubscribe.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logger.error("process group URL: %s", dist_url)
        raise
    # comm.get_local_rank/size read this group, as after detectron2's launch.
    for machine in range(world_size // per_machine):
        group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def create_ddp_model(model, **kwargs):
    """detectron2's create_ddp_model; a model on the CPU gets no device_ids, which DDP rejects
    for CPU modules (detectron2 v0.6 passes the local rank)."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return d2_create_ddp_model(model, **kwargs)
