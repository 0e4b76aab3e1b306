"""Theory references the tests check the engine against; no production code uses them.

Moved out of worker/order.py and worker/fit.py, where only the tests called them: mean-field χ
(Schoenholz et al.), the exact APJN (full Jacobian), the asymptotic Jacobian norm of an iterated
square layer map (arXiv 1909.05176), the twin-trajectory distance of x ← tanh(Wx), SK-model
coupling matrices, and the time a decaying order parameter takes to settle on its plateau.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev

from edgetune.nets import EdgeNet, LayerInfo, activation_derivative, activation_fn
from worker.order import Params, apjn_hutchinson, layer_map, layer_params, random_unit_vectors


def apjn_exact(model: EdgeNet, params: Params, info: LayerInfo, x_in: Tensor) -> Tensor:
    """APJN from the full per-example Jacobian (torch.func.jacrev): for small nets."""
    values = []
    for i in range(x_in.shape[0]):
        xi = x_in[i : i + 1]
        jac = jacrev(lambda x: layer_map(model, params, info, x))(xi)
        n_out = layer_map(model, params, info, xi).numel()
        values.append((jac * jac).sum() / n_out)
    return torch.stack(values).mean()


def iterated_map_norm(
    model: EdgeNet,
    params: Params,
    info: LayerInfo,
    x0: Tensor,
    steps: int = 500,
    tol: float = 1e-7,
) -> float:
    """Asymptotic Jacobian norm ‖∂f/∂x(x*)‖_F/√N of the square layer map f iterated from x0.

    Iterates x ← f(x) up to `steps` times, stopping early once the trajectory has converged
    (relative change < tol) or blown up; then averages the Jacobian norm over the batch. For one
    square tanh layer it reduces to J (arXiv 1909.05176); the edge is at 1. Not vmap-compatible
    (it stops early).
    """
    if not info.square:
        raise ValueError(f"layer {info.index} is not square; it cannot be iterated")
    with torch.no_grad():
        x = x0
        for _ in range(steps):
            nxt = layer_map(model, params, info, x)
            if not torch.isfinite(nxt).all():
                return math.inf
            delta = (nxt - x).norm() / (x.norm() + 1e-12)
            x = nxt
            if delta < tol:
                break
    if info.kind == "linear":
        # Closed form: ∂f/∂x = diag(φ'(h)) W, so ‖·‖_F² = Σ_i φ'(h_i)² Σ_j W_ij².
        p = layer_params(params, info)
        h = torch.nn.functional.linear(x, p["weight"], p.get("bias"))
        d2 = activation_derivative(model.activation, h) ** 2
        row_sq = (p["weight"] ** 2).sum(dim=1)
        per_example = (d2 * row_sq).sum(dim=1) / h.shape[1]
        return float(per_example.mean().sqrt().detach())
    # A private generator: a measurement must not advance the global RNG the training draws from.
    generator = torch.Generator().manual_seed(0)
    vectors = random_unit_vectors(
        8, x.shape[0], tuple(x.shape[1:]), generator=generator, device=x.device
    )
    return math.sqrt(float(apjn_hutchinson(model, params, info, x, vectors)))


def random_coupling_matrix(
    n: int, J: float, J0: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """An n×n matrix with entries N(J0/n, J²/n): the SK-model coupling at (J, J0)."""
    return J0 / n + J / math.sqrt(n) * torch.randn((n, n), generator=generator)


def twin_trajectory_distance(
    W: Tensor,
    x0: Tensor,
    steps: int = 500,
    eps: float = 1e-4,
    generator: torch.Generator | None = None,
) -> float:
    """Distance ‖x − x'‖/√N after iterating x ← tanh(Wx) from x0 and from x0 + eps·noise.

    Below the edge (J < 1) both trajectories fall into the same fixed point and the distance
    vanishes; above it (J > 1) they separate to O(1). science.md §5 item 10.
    """
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x, y = x0, x0 + eps * noise
    with torch.no_grad():
        for _ in range(steps):
            x, y = torch.tanh(W @ x), torch.tanh(W @ y)
    return float((x - y).norm() / math.sqrt(x.numel()))


def mean_field_chi(
    sigma_w: float,
    activation: str,
    q0: float,
    depth: int,
    sigma_b: float = 0.0,
    n_quad: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-field (Schoenholz et al.) q_l and χ_l of a wide random net, layer by layer.

    q_1 = σ_w²·q0 + σ_b² (q0 = mean squared input), q_{l+1} = σ_w² ∫Dz φ(√q_l z)² + σ_b²,
    χ_l = σ_w² ∫Dz φ'(√q_l z)². Gauss–Hermite quadrature on float64 tensors.
    """
    # An odd rule has a node at z = 0, exactly on ReLU's kink, where φ' = 0 takes a whole node's
    # weight (~6% at 201 nodes) from E[φ'²] = ½. An even rule is symmetric about the kink and
    # integrates ReLU's step and half-parabola exactly.
    n_quad += n_quad % 2
    z, w = np.polynomial.hermite_e.hermegauss(n_quad)
    w = w / w.sum()
    zt = torch.from_numpy(z)

    def gauss_mean(values: Tensor) -> float:
        return float(np.sum(w * values.numpy()))

    q = sigma_w**2 * q0 + sigma_b**2
    qs, chis = [], []
    for _ in range(depth):
        qs.append(q)
        h = math.sqrt(q) * zt
        chis.append(sigma_w**2 * gauss_mean(activation_derivative(activation, h) ** 2))
        q = sigma_w**2 * gauss_mean(activation_fn(activation, h) ** 2) + sigma_b**2
    return np.asarray(qs), np.asarray(chis)


def plateau_time(A: float, D: float, y_init: float, *, tol: float = 0.02) -> float:
    """Epoch from which y stays within tol·|y_eq| of its plateau y_eq = A/D; inf without decay."""
    if D <= 0:
        return math.inf
    y_eq = A / D
    gap = abs(y_init - y_eq)
    allowed = tol * abs(y_eq)
    if gap <= allowed:
        return 0.0
    if allowed == 0:
        return math.inf
    return math.log(gap / allowed) / D
