"""AdamW written out (with a multi-tensor path), its parameter groups, and gradient clipping.

Weight decay and which parameters get it: decay pulls weights towards zero, which is what regularises a
weight matrix, but it has no business on the gains of RMSNorm (they start at one and scale activations:
decaying them shrinks the signal) and, by default, on the token embeddings (each row only sees gradient
when its token appears, so decay erodes rare tokens between visits). `param_groups` puts every parameter
with fewer than two dimensions and every embedding table in a group with `weight_decay=0`; set
`decay_embeddings=True` to decay the embeddings too. A tied output head shares the embedding's tensor and
follows the embedding's choice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), computed exactly as follows.

    For every parameter with a gradient, at its step t (counted from 1):
    `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`, `a_t = lr sqrt(1-b2^t) / (1-b1^t)`,
    `p -= a_t m / (sqrt(v) + eps)`, then `p -= lr * weight_decay * p`.
    With `foreach=True` each group is updated with a handful of `torch._foreach_*` calls per device and
    dtype instead of a Python loop over tensors; `foreach=False` runs the plain loop. The default (None)
    takes the multi-tensor path on GPUs, where it saves thousands of kernel launches, and the loop on the
    CPU, where it measured faster: each tensor stays in cache through all of its updates, while the
    multi-tensor calls stream every optimizer state through memory once per operation.
    The state (`step`, `exp_avg`, `exp_avg_sq`) holds only tensors and ints, so it saves in a checkpoint.

    `step(keep=...)` takes a 0-dim float tensor on the parameters' device, 1 to update or 0 to skip: a skipped
    step leaves every parameter and moment as it was (only the step count advances), decided on the device,
    so a training loop can skip a step whose loss is not finite without the host reading the loss. The
    gradients of a skipped step must be finite (zero them: NaN times 0 is still NaN).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        foreach: bool | None = None,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(
        self, closure: Callable[[], float] | None = None, keep: torch.Tensor | None = None
    ) -> float | None:
        """Update every parameter that has a gradient; `closure` re-evaluates the loss if given; `keep` (see the
        class) skips the update on the device where it is 0."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group, keep)
        return loss

    def _step_group(self, group: dict, keep: torch.Tensor | None) -> None:
        """AdamW's update of one group's parameters that have a gradient."""
        params = [p for p in group["params"] if p.grad is not None]
        for same_kind in _by_device_and_dtype(params):
            foreach = group["foreach"] if group["foreach"] is not None else same_kind[0].device.type != "cpu"
            update = _update_foreach if foreach else _update_loop
            update(same_kind, [self._state_for(p) for p in same_kind], group, _Gate(group, keep))

    def _state_for(self, param: nn.Parameter) -> dict:
        """The parameter's state, created at zero on its first step; advances its step count."""
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        return state


def _by_device_and_dtype(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    """Split params so each multi-tensor call sees one device and dtype."""
    groups: dict[tuple, list[nn.Parameter]] = defaultdict(list)
    for p in params:
        groups[(p.device, p.dtype)].append(p)
    return list(groups.values())


def _step_size(group: dict, step: int) -> float:
    """The bias-corrected step size a_t = lr sqrt(1 - b2^t) / (1 - b1^t)."""
    beta1, beta2 = group["betas"]
    return group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)


class _Gate:
    """AdamW's per-step factors, as plain numbers or, with `keep`, as 0-dim tensors that turn into "change
    nothing" where keep is 0 (the moments' blend weights become 0 and their decay 1, the weight decay 1)."""

    def __init__(self, group: dict, keep: torch.Tensor | None) -> None:
        beta1, beta2 = group["betas"]
        on = 1.0 if keep is None else keep
        self.keep = keep
        self.m_weight = on * (1 - beta1)  # m <- lerp(m, g, 1 - b1) = b1 m + (1 - b1) g
        self.v_decay = 1 - on * (1 - beta2)  # v <- b2 v + (1 - b2) g^2 (g is 0 on a skipped step)
        self.v_weight = 1 - beta2
        self.weight_decay = 1 - on * group["lr"] * group["weight_decay"]


def _update_loop(params: list[nn.Parameter], states: list[dict], group: dict, gate: _Gate) -> None:
    for p, state in zip(params, states, strict=True):
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(p.grad, gate.m_weight)  # in one pass over m
        v.mul_(gate.v_decay).addcmul_(p.grad, p.grad, value=gate.v_weight)
        denom = v.sqrt().add_(group["eps"])
        if gate.keep is not None:
            denom.div_(gate.keep)  # infinite on a skipped step, so m / denom moves nothing
        p.addcdiv_(m, denom, value=-_step_size(group, state["step"]))
        if group["weight_decay"]:
            p.mul_(gate.weight_decay)


def _update_foreach(params: list[nn.Parameter], states: list[dict], group: dict, gate: _Gate) -> None:
    grads = [p.grad for p in params]
    ms = [s["exp_avg"] for s in states]
    vs = [s["exp_avg_sq"] for s in states]
    torch._foreach_lerp_(ms, grads, gate.m_weight)  # in one pass over m
    torch._foreach_mul_(vs, gate.v_decay)
    torch._foreach_addcmul_(vs, grads, grads, value=gate.v_weight)
    denoms = torch._foreach_sqrt(vs)
    torch._foreach_add_(denoms, group["eps"])
    if gate.keep is not None:
        torch._foreach_div_(denoms, gate.keep)  # infinite on a skipped step, so m / denom moves nothing
    torch._foreach_addcdiv_(params, ms, denoms, [-_step_size(group, s["step"]) for s in states])
    if group["weight_decay"]:
        torch._foreach_mul_(params, gate.weight_decay)


def _is_embedding(module: nn.Module) -> bool:
    """nn.Embedding or lmkit's own Embedding (matched by name so the optimizer needs no model import)."""
    return isinstance(module, nn.Embedding) or type(module).__name__ == "Embedding"


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two AdamW groups: matrices with `weight_decay`, and norm gains, biases (and embeddings) without.

    See the module docstring for why. Shared (tied) tensors appear once, in the group of the first module
    that owns them.
    """
    decayed: list[nn.Parameter] = []
    undecayed: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            skip = param.ndim < 2 or (_is_embedding(module) and not decay_embeddings)
            (undecayed if skip else decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_l2_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients together so their joint L2 norm is at most `max_l2_norm`; return the norm before.

    Where the norm exceeds `max_l2_norm` every gradient is multiplied by `max_l2_norm / (norm + eps)`.
    On a GPU the factor is computed on the device (no host sync), so clipping costs no pause there.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    norm = total.full_tensor() if isinstance(total, DTensor) else total  # sharded gradients (FSDP) give a DTensor
    if norm.device.type == "cpu" and norm <= max_l2_norm:
        return norm  # reading the norm costs no pause on the CPU, and saves a pass over every gradient
    scale = torch.where(total > max_l2_norm, max_l2_norm / (total + eps), torch.ones_like(total))
    torch._foreach_mul_(grads, scale)
    return norm
