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

Under FSDP a sharded matrix's update is gathered whole (an all-gather per matrix), orthogonalised, and each
rank keeps its own rows; every rank computes the same product, so they stay in step.
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
    """The quintic Newton-Schulz orthogonalisation of a 2-D `update`, returned in the update's dtype.

    Computes in `dtype` (default: bfloat16 on CUDA, float32 elsewhere). The input is normalised by its
    Frobenius norm (plus `eps`) first, so any scale of input works.
    """
    if update.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got a tensor of shape {tuple(update.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if update.device.type == "cuda" else torch.float32
    a, b, c = NS_COEFFICIENTS
    tall = update.shape[0] > update.shape[1]
    x = update.T if tall else update
    x = (x.float() / (torch.linalg.matrix_norm(x.float()) + eps)).to(dtype)
    for _ in range(steps):
        gram = x @ x.T
        # a X + (b A + c A²) X, with the scalings fused into the products
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(update.dtype)


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
        """One group's update (AdamW.step calls it for each group): Muon groups by Muon, the others by AdamW."""
        if not group["muon"]:
            super()._step_group(group, keep)
            return
        for param in group["params"]:
            if param.grad is not None:
                self._muon_update(param, group, keep)

    def _muon_update(self, param: nn.Parameter, group: dict, keep: torch.Tensor | None) -> None:
        """Muon's update of one matrix; where `keep` is 0 (see AdamW) the matrix and its momentum stay."""
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        on = 1.0 if keep is None else keep
        momentum, grad = state["momentum_buffer"], param.grad
        momentum.mul_(1 - on * (1 - group["momentum"])).add_(grad)  # mu m + g; m itself on a skipped step
        nesterov = grad.add(momentum, alpha=group["momentum"])
        orthogonal = newton_schulz(_whole(nesterov), eps=group["eps"])
        if keep is not None:
            orthogonal.mul_(keep)
        if isinstance(param, DTensor):  # each rank keeps its own shard of the (identical) whole result
            orthogonal = distribute_tensor(orthogonal, param.device_mesh, param.placements, src_data_rank=None)
        if group["weight_decay"]:
            param.mul_(1 - on * group["lr"] * group["weight_decay"])
        param.add_(orthogonal, alpha=-group["lr"] * update_scale(param.shape))


def _whole(tensor: Tensor) -> Tensor:
    """The whole matrix: a sharded DTensor (FSDP) gathered from every rank, a plain tensor as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


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
