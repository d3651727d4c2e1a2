"""Training on several processes (GPUs, nodes) with PyTorch's DistributedDataParallel, started by torchrun.

torchrun starts one process per GPU and tells each who it is through the environment, the only place
lmkit reads it from: RANK (0 … WORLD_SIZE − 1 over all nodes), LOCAL_RANK (its index on this node, which
picks its GPU), WORLD_SIZE, and MASTER_ADDR / MASTER_PORT (where the processes meet). Without WORLD_SIZE
above 1 a run is one process and nothing here changes it.

How a step is shared (see docs/distributed.md): train.batch_size is the global batch. Every rank draws
the same global batch from the same seeded generator and keeps its own slice of rows, so the batches of a
step, and the generator state saved in checkpoints, do not depend on the number of processes; a run
resumes exactly on any number of them. DistributedDataParallel averages the gradients; only rank 0 logs
and writes files.

With train.parallel = "fsdp" the model is sharded instead (FSDP2's `fully_shard`, one unit per transformer
block and one for the rest): each rank holds 1/world_size of every parameter, gradient and optimizer state,
and gathers a block's weights only while it runs. Checkpoints stay the same single file with whole tensors
(gathered for rank 0 to write, cut into shards again on loading), so runs resume across ddp, fsdp and one
process alike.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from lmkit.errors import InputError
from lmkit.threads import usable_cpus

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not a whole number (torchrun sets it)") from None


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: its global `rank`, its `local_rank` on the node, and `world_size`."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Distributed:
        """Read RANK, LOCAL_RANK and WORLD_SIZE (as torchrun sets them); none set means one process."""
        rank, local_rank = _env_int(environ, "RANK", 0), _env_int(environ, "LOCAL_RANK", 0)
        found = cls(rank, local_rank, _env_int(environ, "WORLD_SIZE", 1))
        if found.world_size < 1 or not 0 <= found.rank < found.world_size or found.local_rank < 0:
            raise InputError(
                f"inconsistent torchrun environment: RANK={found.rank}, LOCAL_RANK={found.local_rank}, "
                f"WORLD_SIZE={found.world_size}"
            )
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if found.enabled and name not in environ]
        if missing:
            raise InputError(
                f"WORLD_SIZE is {found.world_size} but {' and '.join(missing)} is not set; "
                "start several processes with torchrun or `lmkit train --nproc N`"
            )
        return found

    @property
    def enabled(self) -> bool:
        """Whether there are several processes (else every helper here is a no-op)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one process that logs, shows progress and writes files."""
        return self.rank == 0

    def row_share(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of `batch_size`; InputError unless it splits evenly."""
        if batch_size % self.world_size:
            raise InputError(
                f"train.batch_size ({batch_size}) is the global batch and must split evenly over "
                f"{self.world_size} processes; make it a multiple of {self.world_size}"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def device_for(self, device: torch.device) -> torch.device:
        """The device this rank trains on: on CUDA the GPU of its LOCAL_RANK, made the current one."""
        if not self.enabled:
            return device
        if device.type == "mps":
            raise InputError('several processes need CUDA or the CPU; set train.device = "cpu" for MPS machines')
        if device.type != "cuda":
            return device
        if device.index is not None:
            raise InputError(
                f'train.device = "{device}" names one GPU, but each process uses the GPU of its LOCAL_RANK; '
                'set train.device = "cuda" (or "auto")'
            )
        if self.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {self.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                "start at most one process per GPU on each node"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL for GPUs, Gloo for CPUs), with MASTER_ADDR / MASTER_PORT from torchrun."""
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend,
                init_method="env://",
                rank=self.rank,
                world_size=self.world_size,
                device_id=device if device.type == "cuda" else None,
            )

    def stop(self) -> None:
        """Leave the process group (if this process joined one)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(
        self,
        model: nn.Module,
        device: torch.device,
        parallel: str = "ddp",
        compute_dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> nn.Module:
        """What to call for the forward pass: `model` itself for one process, in DistributedDataParallel (which
        averages gradients over the ranks), or, for `parallel="fsdp"`, sharded in place block by block (FSDP2);
        torch.compile'd where `compile`.

        Under FSDP each block is compiled before it is sharded (compiling the sharded whole traces FSDP's
        hooks and breaks the graph at every block); with `compute_dtype` (the autocast dtype) the weights are
        gathered in it and the gradients reduced in float32; the root (embeddings, final norm, LM head) stays
        gathered from the forward to the backward, as the backward needs the LM head first.
        Build the optimizer after this: sharding replaces the parameters.
        """
        if not self.enabled:
            return torch.compile(model) if compile else model
        if parallel == "fsdp":
            return shard_model(model, init_device_mesh(device.type, (self.world_size,)), compute_dtype, compile)
        # The only buffers are the RoPE tables, alike on every rank: broadcasting them before every forward
        # would be wasted traffic and, under torch.compile, a graph break. (torch 2.13 renamed the switch.)
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
        )
        return torch.compile(wrapped) if compile else wrapped

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all ranks (for losses and other metrics); `value` itself for one process."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)  # Gloo has no AVG, so sum and divide
        return total / self.world_size

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def max(self, number: int, device: torch.device) -> int:
        """The largest of every rank's `number`, so all ranks take the same decision (e.g. stopping on a signal
        that reached one of them, and which)."""
        if not self.enabled:
            return number
        value = torch.tensor(number, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())


def shard_model(
    model: nn.Module, mesh: DeviceMesh, compute_dtype: torch.dtype | None = None, compile: bool = False
) -> nn.Module:
    """`model` (a TransformerLM) sharded in place over `mesh` by FSDP2, one unit per block and one for the rest,
    as `Distributed.wrap` does for train.parallel = "fsdp" (see there)."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


@contextlib.contextmanager
def _fsdp_gradient_sync(model: FSDPModule, sync: bool) -> Iterator[None]:
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Around one micro-batch's forward and backward: skips the gradients' all-reduce (DDP) or reduce-scatter
    (FSDP) unless `sync`.

    With gradient accumulation only the last micro-batch needs the averaged gradients; the others only add
    to the local ones. `model` may be torch.compile'd.
    """
    model = getattr(model, "_orig_mod", model)
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, FSDPModule):
        return _fsdp_gradient_sync(model, sync)
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def local_numel(tensor: torch.Tensor) -> int:
    """How many of the tensor's elements this process holds: its shard's under FSDP, else all."""
    return tensor.to_local().numel() if isinstance(tensor, DTensor) else tensor.numel()


def _gathered(value: object, keep: bool) -> object:
    """A shard gathered whole (onto the CPU, and only if `keep`: every rank must take part); else `value`."""
    if not isinstance(value, DTensor):
        return value
    whole = value.full_tensor()
    return whole.cpu() if keep else None


def whole_state(model: nn.Module, optimizer: torch.optim.Optimizer, keep: bool) -> tuple[dict, dict]:
    """The model's and the optimizer's state dicts with whole tensors, as one process would have them.

    Under FSDP every rank must call this: the shards are gathered one tensor at a time, and only where
    `keep` (rank 0, which writes them) do the whole tensors stay, in CPU memory. Elsewhere nothing is
    gathered or copied.
    """
    model_state = {name: _gathered(value, keep) for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = {
        index: {key: _gathered(value, keep) for key, value in state.items()}
        for index, state in optimizer_state["state"].items()
    }
    return model_state, optimizer_state


def shard_like_parameters(optimizer_state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole-tensor optimizer state dict (from a checkpoint) cut into the shards of the optimizer's parameters.

    Where the parameters are not sharded it is returned as is.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        return optimizer_state
    saved_indices = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    param_at = dict(zip(saved_indices, params, strict=True))
    state = {}
    for index, values in optimizer_state["state"].items():
        param = param_at[index]
        state[index] = {
            key: distribute_tensor(value, param.device_mesh, param.placements)
            if isinstance(value, torch.Tensor) and isinstance(param, DTensor) and value.shape == param.shape
            else value
            for key, value in values.items()
        }
    return {**optimizer_state, "state": state}


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The command line that runs `lmkit train train_args` on `nproc` processes of this machine."""
    # A private rendezvous store on a free loopback port, so several runs on one machine never collide.
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc)),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"),
        *("-m", "lmkit", "train", *train_args),
    ]


def launch(nproc: int, batch_size: int, train_args: list[str]) -> NoReturn:
    """Replace this process with torchrun running `lmkit train train_args` on `nproc` local processes.

    Checks first what would make every process fail: already being one of torchrun's processes, and a
    batch that does not split over `nproc`.
    """
    if "RANK" in os.environ:
        raise InputError("--nproc starts torchrun, but this process was already started by torchrun; drop --nproc")
    Distributed(world_size=nproc).row_share(batch_size)
    # torchrun would give each process one thread; on CPUs share the cores out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))
    command = torchrun_command(nproc, train_args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
