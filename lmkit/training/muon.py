"""Muon (MomentUm Orthogonalized by Newton-Schulz) for the hidden weight matrices, AdamW for the rest.

For each 2-D weight matrix W inside the transformer blocks, at every step, with gradient g:

    m = mu m + g                        momentum (the buffer starts at zero)
    u = g + mu m                        Nesterov: look one momentum step ahead
    O = NewtonSchulz5(u / (||u||_F + eps))
    W = W - lr (scale O + weight_decay W)

NewtonSchulz5 runs five steps of the quintic iteration X <- a X + (b A + c A^2) X with A = X Xᵀ and
(a, b, c) = (3.4445, -4.7750, 2.0315) on the wide orientation of the matrix (a tall one is transposed
first, so A is the smaller Gram matrix). Dividing by the Frobenius norm puts every singular value in
[0, 1]; the iteration then pushes each one that is not tiny into a band around 1 (`SINGULAR_VALUE_BAND`)
while keeping the singular vectors: O is close to U Vᵀ of u = U S Vᵀ, the nearest semi-orthogonal matrix.
The coefficients trade exact convergence to 1 for a steep slope at 0, so five steps suffice. It runs in
bfloat16 on CUDA (the matmuls are the cost, and the iteration is robust to bfloat16 rounding) and in
float32 elsewhere (CPUs and MPS gain nothing from bfloat16).

The scale: `0.2 sqrt(max(rows, cols))` (Moonshot AI's rule, "Muon is Scalable for LLM Training", 2025).
O has all singular values near 1, so its RMS is sqrt(min(rows, cols) / (rows cols)) = 1 / sqrt(max(rows,
cols)); the scale brings the update's RMS to 0.2, about the RMS of an AdamW update in steady training. So
Muon's learning rate and weight decay mean what AdamW's do, the same schedule fits both families, and a
learning rate tuned for AdamW is a sensible starting point for `optim.muon_lr` (Keller Jordan's original
rule, `sqrt(max(1, rows / cols))`, needs a learning rate 0.2 sqrt(max(rows, cols)) times larger, about 5x
at d_model 768, and its own weight decay).

Routing (`muon_param_groups`): every parameter with two or more dimensions inside `model.layers` (the
attention projections and the feed-forward matrices) goes to Muon. The token embeddings, the LM head
(which Muon would treat as a plain matrix, though its rows are per-token outputs) and every norm gain
(including QK-norm's) stay on AdamW, in the same `Muon` optimizer object: one `step()` updates both
families, so clipping, gradient scaling, the schedule and checkpoints see a single optimizer.

Matrices of one shape are orthogonalised together (batched products). Under FSDP a sharded matrix's update
is gathered whole (an all-gather per matrix); each rank orthogonalises its share of the matrices (every
world_size-th of each shape) and scatters each result into the ranks' shards, so the Newton-Schulz work
is divided among the GPUs rather than repeated on each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from lmkit.model.names import split_block_name
from lmkit.training.config import OptimConfig
from lmkit.training.optim import AdamW, param_groups

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
# Where five quintic steps (in float32) leave the output's singular values, for every singular value of
# the normalised input u / ||u||_F of at least NS_CONVERGED_FROM; smaller ones (directions the update
# barely has) are amplified only part of the way, and no output singular value exceeds the band. The
# iteration acts on each singular value alone, as p(s) = a s + b s^3 + c s^5, and p applied five times
# maps [2e-3, 1] into [0.682, 1.203]; tests check the band on random matrices of several shapes.
SINGULAR_VALUE_BAND = (0.68, 1.21)
NS_CONVERGED_FROM = 2e-3


def newton_schulz(update: Tensor, steps: int = NS_STEPS, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    """The quintic Newton-Schulz orthogonalisation of a 2-D `update`, or of each matrix of a 3-D stack of
    same-shape ones (one batched product per step instead of one per matrix), returned in the update's dtype.

    Computes in `dtype` (default: bfloat16 on CUDA, float32 elsewhere). Each matrix is normalised by its
    Frobenius norm (plus `eps`) first, so any scale of input works.
    """
    if update.ndim not in (2, 3):
        raise ValueError(f"Newton-Schulz needs a matrix, got a tensor of shape {tuple(update.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if update.device.type == "cuda" else torch.float32
    a, b, c = NS_COEFFICIENTS
    tall = update.shape[-2] > update.shape[-1]
    x = update.mT if tall else update
    x = x.float() if x.ndim == 3 else x.float()[None]
    x = (x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)).to(dtype)
    for _ in range(steps):
        gram = x @ x.mT
        # a X + (b A + c A²) X, with the scalings fused into the products
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x if update.ndim == 3 else x[0]
    return (x.mT if tall else x).to(update.dtype)


def update_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """0.2 sqrt(max(rows, cols)): gives the orthogonalised update AdamW's typical RMS (module docstring)."""
    return 0.2 * math.sqrt(max(shape[0], shape[1]))


class Muon(AdamW):
    """Muon for the groups marked `"muon": True`, AdamW (lmkit's, unchanged) for every other group.

    A Muon group's settings: `lr`, `momentum` (mu, in [0, 1)), `weight_decay` (decoupled, as in AdamW),
    `eps` (added to the Frobenius norm). Its per-parameter state is `momentum_buffer`; AdamW groups keep
    AdamW's settings and state. Build the groups with `muon_param_groups`. Every state is a tensor or an
    int, so the optimizer saves in a checkpoint and loads with weights_only=True.
    """

    def __init__(self, params: Iterable[dict], lr: float = 1e-3, momentum: float = 0.95, **adamw: object) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        groups = [{**group} for group in params]
        for group in groups:
            group.setdefault("muon", False)
            if group["muon"]:
                group.setdefault("momentum", momentum)
                group.setdefault("eps", 1e-7)
                bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                if bad:
                    raise ValueError(f"Muon groups take 2-D matrices only, got shapes {bad}")
        super().__init__(groups, lr=lr, **adamw)

    def _step_group(self, group: dict, keep: torch.Tensor | None) -> None:
        """One group's update (AdamW.step calls it for each group): Muon groups by Muon, the others by AdamW.

        A Muon group's matrices are orthogonalised in stacks of one shape (a batched product each; a tall
        matrix joins the stack of its transpose's shape). Under FSDP the stacks are shared out: each rank
        orthogonalises every world_size-th matrix of a stack,
        and each result is scattered from that rank into the shards, so the optimizer's work shrinks with
        more GPUs instead of every rank repeating all of it.
        """
        if not group["muon"]:
            super()._step_group(group, keep)
            return
        params = [param for param in group["params"] if param.grad is not None]
        updates = [self._nesterov(param, group, keep) for param in params]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, param in enumerate(params):
            by_shape.setdefault(tuple(sorted(param.shape)), []).append(index)
        on = 1.0 if keep is None else keep
        for indices in by_shape.values():
            orthogonalised = _orthogonalise([updates[i] for i in indices], group["eps"])
            for index, orthogonal in zip(indices, orthogonalised, strict=True):
                param = params[index]
                if keep is not None:
                    orthogonal = orthogonal * keep
                if group["weight_decay"]:
                    param.mul_(1 - on * group["lr"] * group["weight_decay"])
                param.add_(orthogonal, alpha=-group["lr"] * update_scale(param.shape))

    def _nesterov(self, param: nn.Parameter, group: dict, keep: torch.Tensor | None) -> Tensor:
        """Advance the matrix's momentum (not on a skipped step, where `keep` is 0) and return g + mu m."""
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        on = 1.0 if keep is None else keep
        momentum, grad = state["momentum_buffer"], param.grad
        momentum.mul_(1 - on * (1 - group["momentum"])).add_(grad)  # mu m + g; m itself on a skipped step
        return grad.add(momentum, alpha=group["momentum"])


def _orthogonalise(updates: list[Tensor], eps: float) -> list[Tensor]:
    """newton_schulz of each of `updates` (one shape, or its transpose), as one stack; sharded ones (FSDP)
    shared out over the ranks, each result returned as the shard of it that this rank holds."""
    if not isinstance(updates[0], DTensor):
        return _newton_schulz_stack(updates, eps)
    mesh = updates[0].device_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    # Every rank must join every gather; only the owner of a matrix (index % world) keeps it whole.
    mine = []
    for index, update in enumerate(updates):
        gathered = update.full_tensor()
        if index % world == rank:
            mine.append(gathered)
    done = _newton_schulz_stack(mine, eps) if mine else []
    results = []
    for index, update in enumerate(updates):
        owner = index % world
        source = (
            done[index // world]
            if owner == rank
            else torch.empty(update.shape, dtype=update.dtype, device=update.device)
        )
        results.append(distribute_tensor(source, mesh, update.placements, src_data_rank=owner))
    return results


def _newton_schulz_stack(matrices: list[Tensor], eps: float) -> list[Tensor]:
    """newton_schulz of each matrix, all in one batched stack: tall ones enter transposed (as newton_schulz
    would turn them anyway) and come back in their own orientation."""
    tall = [matrix.shape[0] > matrix.shape[1] for matrix in matrices]
    wide = torch.stack([matrix.mT if flip else matrix for matrix, flip in zip(matrices, tall, strict=True)])
    done = newton_schulz(wide, eps=eps).unbind()
    return [result.mT if flip else result for result, flip in zip(done, tall, strict=True)]


def is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    """Whether Muon takes this parameter of a TransformerLM: a 2-D weight inside `layers`."""
    return split_block_name(name) is not None and param.ndim == 2


def muon_param_groups(
    model: nn.Module, lr: float, muon_lr: float, momentum: float, weight_decay: float, decay_embeddings: bool = False
) -> list[dict]:
    """The Muon group (the hidden matrices, `is_hidden_matrix`) followed by AdamW's groups for the rest.

    AdamW's groups are `param_groups`' (decayed matrices; norm gains and embeddings undecayed) without the
    hidden matrices; empty groups are dropped. Tied tensors appear once.
    """
    hidden = [param for name, param in model.named_parameters() if is_hidden_matrix(name, param)]
    hidden_ids = {id(param) for param in hidden}
    groups = [{"params": hidden, "muon": True, "lr": muon_lr, "momentum": momentum, "weight_decay": weight_decay}]
    for group in param_groups(model, weight_decay, decay_embeddings):
        rest = [param for param in group["params"] if id(param) not in hidden_ids]
        groups.append({**group, "params": rest, "muon": False, "lr": lr})
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> AdamW:
    """The optimizer `optim.name` asks for over `model`'s parameters: AdamW, or Muon with AdamW for the rest.

    Build it after any wrapping or sharding of the model (FSDP replaces the parameters).
    """
    if optim.name == "adamw":
        groups = param_groups(model, optim.weight_decay, optim.decay_embeddings)
        return AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    groups = muon_param_groups(
        model, optim.lr, optim.muon_lr, optim.muon_momentum, optim.weight_decay, optim.decay_embeddings
    )
    return Muon(groups, lr=optim.lr, momentum=optim.muon_momentum, betas=optim.betas, eps=optim.eps)


def set_learning_rates(optimizer: torch.optim.Optimizer, optim: OptimConfig, schedule_factor: float) -> None:
    """Set every group's lr to its family's peak (optim.lr, or optim.muon_lr for Muon groups) times
    `schedule_factor`, the warmup + cosine schedule's value over its peak at this step."""
    for group in optimizer.param_groups:
        group["lr"] = (optim.muon_lr if group.get("muon") else optim.lr) * schedule_factor
