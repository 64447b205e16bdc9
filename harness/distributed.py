"""One run on several processes: which process this is, who prepares the run, and the Lightning strategy.

Three ways to start the processes of a run, all through Lightning's cluster environments:
- `harness pretrain --set impl.devices=N` on one machine: the command is rank 0; Lightning's launcher starts ranks
  1..N-1 inside `trainer.fit`, after rank 0 has prepared the run directory and the data cache;
- torchrun (`TorchElasticEnvironment`) and SLURM (`SLURMEnvironment`, one task per device): every rank starts at
  once, so the processes join their process group early and rank 0 prepares while the others wait at a barrier.
Either way only global rank 0 writes the run directory (config, relaunch record, logs, checkpoints, exported model,
final metrics) and the data cache; the others only read them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from harness.config import ConfigError


@dataclass(frozen=True)
class Process:
    rank: int  # global rank (started together); for ranks Lightning starts, 0 only for the launching command
    local_rank: int
    world_size: int
    started_together: bool  # torchrun / SLURM started every rank at once (else Lightning starts ranks > 0 later)
    main_address: str = "127.0.0.1"  # where rank 0 listens (ranks started together)
    main_port: int = 0

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def this_process() -> Process:
    """This process's place in the run, read from the launcher's environment before any Trainer exists."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            env = environment()
            return Process(env.global_rank(), env.local_rank(), env.world_size(), started_together=True,
                           main_address=env.main_address, main_port=env.main_port)
    # Lightning's own launcher gives the ranks it starts LOCAL_RANK, NODE_RANK and WORLD_SIZE; the command that
    # launches them has none of these (rank 0). Lightning assigns global ranks itself, inside trainer.fit.
    local, node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("NODE_RANK", 0))
    return Process(local + node, local, int(os.environ.get("WORLD_SIZE", 1)), started_together=False)


def check_launch(process: Process, world_size: int, strategy: str, accelerator: str) -> None:
    """Before any work: FSDP needs CUDA (Lightning's FSDP strategy), and a launcher that started another number of
    processes than the config asks for would change how every update is split."""
    if strategy == "fsdp" and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("impl.strategy = 'fsdp' needs CUDA GPUs (Lightning's FSDP) and this machine has none; "
                         "allowed here: impl.strategy = 'ddp' or 'auto'")
    if process.started_together and process.world_size != world_size:
        raise ConfigError(
            f"the launcher started {process.world_size} processes but impl.devices x impl.num_nodes = {world_size}; "
            "allowed: equal numbers (torchrun --nproc-per-node = impl.devices, --nnodes = impl.num_nodes; SLURM "
            "--ntasks-per-node = impl.devices, --nodes = impl.num_nodes)"
        )


def join_early(process: Process, accelerator: str) -> None:
    """Ranks started together join the default process group now (Lightning finds it initialised and keeps it),
    so they can wait for rank 0's preparation. gloo carries CPU tensors, NCCL CUDA ones."""
    if not process.started_together or process.world_size == 1 or torch.distributed.is_initialized():
        return
    # as Lightning does before it joins: SLURM names the root node and port only through its environment
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = process.main_address, str(process.main_port)
    backend = "gloo"
    if accelerator != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(process.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    torch.distributed.init_process_group(backend, rank=process.rank, world_size=process.world_size)


@contextmanager
def rank_zero_first(process: Process) -> Iterator[None]:
    """Rank 0 runs the block first; ranks started together wait for it at a barrier before running theirs (in
    which they only read what rank 0 wrote). Ranks Lightning starts later find everything already there."""
    if process.is_zero:
        yield
    waiting = process.started_together and torch.distributed.is_initialized()
    if waiting:
        torch.distributed.barrier()
    if not process.is_zero:
        yield


def build_strategy(strategy: str, world_size: int) -> Any:
    """impl.strategy as a Lightning strategy. `auto` is one process, or DDP when several are asked for. DDP does
    not re-broadcast buffers before every forward: ours are constants (position ids) and counters summed over all
    ranks (tokens seen), equal on every rank, and the broadcast would make validation with an uneven number of
    batches per rank hang."""
    import inspect

    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    if strategy == "fsdp":
        return FSDPStrategy()
    if strategy == "ddp" or world_size > 1:
        # newer torch calls it forward_sync_buffers (and deprecates broadcast_buffers); older torch has only the latter
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        return DDPStrategy(**{"forward_sync_buffers" if newer else "broadcast_buffers": False})
    return "auto"
