"""torch.distributed for the engine: one process per device, started by torchrun.

Each process trains on its own slice of each global batch: from a prepared token cache it reads
only that slice's tokens; streamed, it reads the whole batch and keeps its slice. Either way the
data position counts global rows, so it is the same on all of them and does not depend on their
number (surgery.distill.feed).
The student is replicated with DDP when its training state fits comfortably on one device, and
sharded with FSDP2 (`fully_shard`, one unit per layer) when it does not; the teacher is
replicated, or sharded the same way when its weights are large. `SURGERY_DISTILL_STRATEGY=fsdp`
(or `ddp`) overrides the choice.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from surgery.errors import SurgeryError

STUDENT_SHARE = 0.5  # shard the student when its fp32 weights, grads and AdamW exceed this share of memory
TEACHER_SHARE = 0.35  # shard the teacher when its weights exceed this share


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start(device_kind: str) -> World:
    """Join the process group when launched by torchrun; a world of one otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_kind)
    if size == 1:
        return World(0, 1, 0, device)
    if device_kind == "mps":
        raise SurgeryError("multi-process training runs on CUDA or CPU, not MPS")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo",
                                device_id=device if device_kind == "cuda" else None)
    return World(dist.get_rank(), size, local, device)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_memory(world: World) -> int | None:
    if world.device.type == "cuda":
        return torch.cuda.get_device_properties(world.device).total_memory
    return None


def strategy(world: World, schedule) -> str:
    """'single', 'ddp' or 'fsdp' for the student."""
    if world.size == 1:
        return "single"
    forced = os.environ.get("SURGERY_DISTILL_STRATEGY")
    if forced:
        if forced not in ("ddp", "fsdp"):
            raise SurgeryError(f"SURGERY_DISTILL_STRATEGY={forced} is neither ddp nor fsdp")
        return forced
    memory = device_memory(world)
    return "fsdp" if memory and 16 * schedule.student_params > STUDENT_SHARE * memory else "ddp"


def shard_teacher(world: World, schedule) -> bool:
    memory = device_memory(world)
    bytes_per = 4 if schedule.teacher_dtype == "fp32" else 2
    return world.size > 1 and memory is not None and bytes_per * schedule.teacher_params > TEACHER_SHARE * memory


def fully_shard_layers(module: torch.nn.Module, layers) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(module)


def wrap(distiller: torch.nn.Module, world: World, how: str, layers, find_unused: bool):
    if how == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(distiller, device_ids=[world.device] if world.device.type == "cuda" else None,
                                       find_unused_parameters=find_unused)
    if how == "fsdp":
        fully_shard_layers(distiller, layers)
    return distiller


@contextlib.contextmanager
def gradient_sync(model, how: str, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if how == "ddp" and not sync:
        with model.no_sync():
            yield
        return
    if how == "fsdp":
        model.set_requires_gradient_sync(sync)
    yield


def sum_all(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj, world: World) -> list:
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
