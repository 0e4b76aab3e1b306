"""Order parameters of the chaos transition, per hidden layer and as one network summary.

Definitions follow shared/docs/science.md §2:

- J_l = √fan_in·std(W_l), J0_l = fan_in·mean(W_l) (population std/mean over all entries).
- χ_l = J_l²·E[φ'(h_l)²], h_l the layer's own pre-activations on a data batch.
- APJN_l = E_x ‖∂f_l/∂x_l‖_F² / N_out for the layer map f_l(x_l) = φ(W_l x_l + b_l). In mean field
  this equals χ_l as defined above; we use the layer map (rather than h_l → h_{l+1}) because it is
  defined for every hidden layer, including the paper's single one.
- The asymptotic Jacobian norm of an iterated square map (arXiv 1909.05176) and the twin-trajectory
  distance of x ← tanh(Wx).

Cost: J is free (weights only), χ one forward pass, APJN one backward pass per random vector, the
iterated map T forward passes. The per-member functions (`couplings`, `susceptibilities`,
`apjn_hutchinson`, `measure`) are free of data-dependent Python control flow and `.item()`, so the
probe engine can `torch.func.vmap` them over a population of stacked parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp

from worker.nets import EdgeNet, LayerInfo, activation_derivative, activation_fn

Params = dict[str, Tensor]


def coupling(weight: Tensor, fan_in: int) -> tuple[Tensor, Tensor]:
    """(J, J0) of one weight tensor: entries read as drawn from N(J0/fan_in, J²/fan_in)."""
    w = weight.reshape(-1)
    mean = w.mean()
    std = ((w - mean) ** 2).mean().sqrt()  # population std, as in the paper
    return math.sqrt(fan_in) * std, fan_in * mean


def couplings(params: Params, infos: list[LayerInfo]) -> tuple[Tensor, Tensor]:
    """J_l and J0_l for every hidden layer, as tensors of shape (L,)."""
    pairs = [coupling(params[info.weight], info.fan_in) for info in infos]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def susceptibilities(preacts: list[Tensor], J: Tensor, infos: list[LayerInfo]) -> Tensor:
    """χ_l = J_l²·E[φ'(h_l)²] over the batch (and positions, for conv layers)."""
    mean_sq = []
    for h, info in zip(preacts, infos, strict=True):
        assert info.activation is not None
        d = activation_derivative(info.activation, h)
        mean_sq.append((d * d).mean())
    return J * J * torch.stack(mean_sq)


def _layer_params(params: Params, info: LayerInfo) -> Params:
    prefix = info.weight.removesuffix("weight")
    out = {"weight": params[info.weight]}
    if prefix + "bias" in params:
        out["bias"] = params[prefix + "bias"]
    return out


def _layer_map(model: EdgeNet, params: Params, info: LayerInfo, x: Tensor) -> Tensor:
    layer = model.layers[info.index]
    h = functional_call(layer, _layer_params(params, info), (x,))
    return activation_fn(model.activation, h)


def random_unit_vectors(
    n_vectors: int,
    batch: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(n_vectors, batch, *shape) Gaussian vectors normalised to unit norm per example."""
    v = torch.randn((n_vectors, batch, *shape), generator=generator, device="cpu").to(device)
    norms = v.flatten(2).norm(dim=2).reshape(n_vectors, batch, *([1] * len(shape)))
    return v / norms


def apjn_hutchinson(
    model: EdgeNet, params: Params, info: LayerInfo, x_in: Tensor, vectors: Tensor
) -> Tensor:
    """APJN of one hidden layer from vector–Jacobian products against random unit vectors.

    For v uniform on the unit sphere of R^N_out, E‖vᵀJ‖² = ‖J‖_F²/N_out. The batch map is
    block-diagonal (examples do not mix), so one VJP on the batch gives every example's term.
    `vectors` has shape (n_vectors, batch, *out_shape).
    """
    _, pullback = vjp(lambda x: _layer_map(model, params, info, x), x_in)[:2]
    estimates = []
    for k in range(vectors.shape[0]):
        (g,) = pullback(vectors[k])
        estimates.append((g * g).flatten(1).sum(dim=1).mean())
    return torch.stack(estimates).mean()


def apjn_exact(model: EdgeNet, params: Params, info: LayerInfo, x_in: Tensor) -> Tensor:
    """APJN from the full per-example Jacobian (torch.func.jacrev): for small nets and tests."""
    values = []
    for i in range(x_in.shape[0]):
        xi = x_in[i : i + 1]
        jac = jacrev(lambda x: _layer_map(model, params, info, x))(xi)
        n_out = _layer_map(model, params, info, xi).numel()
        values.append((jac * jac).sum() / n_out)
    return torch.stack(values).mean()


def summary_layers(infos: list[LayerInfo]) -> list[int]:
    """Layers that form the iterated map: hidden-to-hidden layers, plus the first if square.

    The input layer (unless it maps a space onto itself, as in the paper's 784→784 net) and the
    read-out are not part of it. Falls back to every hidden layer when none qualifies.
    """
    chosen = [i for i, info in enumerate(infos) if i > 0 or info.square]
    return chosen or list(range(len(infos)))


def lyapunov_summary(chi: Tensor, layers: list[int]) -> Tensor:
    """Mean of ½·ln χ_l over `layers`: a Lyapunov exponent per layer, edge at 0."""
    return 0.5 * torch.log(chi[layers]).mean()


def measure(
    model: nn.Module,
    params: Params,
    x: Tensor,
    infos: list[LayerInfo],
    vectors: list[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Every per-layer order parameter of one model on batch `x`.

    Returns J, J0 (shape (L,)); for EdgeNet models also chi and `lyapunov` (scalar); with
    `vectors` (one tensor per layer, see `random_unit_vectors`) also apjn. vmap-compatible.
    """
    J, J0 = couplings(params, infos)
    out = {"J": J, "J0": J0}
    if not isinstance(model, EdgeNet):
        return out
    _, inputs, preacts = functional_call(model, params, (x,), {"trace": True})
    chi = susceptibilities(preacts, J, infos)
    out["chi"] = chi
    out["lyapunov"] = lyapunov_summary(chi, summary_layers(infos))
    if vectors is not None:
        out["apjn"] = torch.stack(
            [
                apjn_hutchinson(model, params, info, inputs[i], vectors[i])
                for i, info in enumerate(infos)
            ]
        )
    return out


def layer_inputs(model: EdgeNet, params: Params, x: Tensor) -> list[Tensor]:
    """The input each hidden layer sees for batch `x`."""
    _, inputs, _ = functional_call(model, params, (x,), {"trace": True})
    return list(inputs)


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
    (it stops early), so the probe engine calls it per member, rarely.
    """
    if not info.square:
        raise ValueError(f"layer {info.index} is not square; it cannot be iterated")
    with torch.no_grad():
        x = x0
        for _ in range(steps):
            nxt = _layer_map(model, params, info, x)
            if not torch.isfinite(nxt).all():
                return math.inf
            delta = (nxt - x).norm() / (x.norm() + 1e-12)
            x = nxt
            if delta < tol:
                break
    if info.kind == "linear":
        # Closed form: ∂f/∂x = diag(φ'(h)) W, so ‖·‖_F² = Σ_i φ'(h_i)² Σ_j W_ij².
        p = _layer_params(params, info)
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
