"""Order parameters of the chaos transition, per hidden layer and as one network summary.

Definitions follow shared/docs/science.md §2:

- J_l = √fan_in·std(W_l), J0_l = fan_in·mean(W_l) (population std/mean over all entries).
- χ_l = J_l²·E[φ'(h_l)²], h_l the layer's own pre-activations on a data batch.
- APJN_l = E_x ‖∂f_l/∂x_l‖_F² / N_out for the layer map f_l(x_l) = φ(W_l x_l + b_l). In mean field
  this equals χ_l as defined above; we use the layer map (rather than h_l → h_{l+1}) because it is
  defined for every hidden layer, including the paper's single one.
- the network's APJN (`network_apjn`): the same for the whole map from input to logits; under
  BatchNorm, where J is a gauge, the scale-invariant quantity.

Cost: J is free (weights only), χ one forward pass, APJN one backward pass per random vector. The
per-member functions (`couplings`, `susceptibilities`,
`apjn_hutchinson`, `measure`) are free of data-dependent Python control flow and `.item()`, so the
probe engine can `torch.func.vmap` them over a population of stacked parameters. The references
the tests check these against (mean-field χ, the exact APJN, the iterated-map norm) live in
tests/theory.py: nothing in the service uses them.
"""

from __future__ import annotations

import math

import torch
import torch._dynamo  # noqa: F401  (see below)
from torch import Tensor, nn
from torch.func import functional_call, vjp

from edgetune.nets import EdgeNet, LayerInfo, activation_derivative, activation_fn

# torch.func.vjp imports torch._dynamo on its first call (1.5–3 s on these CPUs): importing it here
# moves that once-per-process cost to the worker's start instead of the first job's probes.

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
        # ReLU's φ' is 0 or 1, so φ'² = φ' exactly: one pass over a conv layer's pre-activations
        # (B × C × H × W) saved, about 3 % of a small CNN's probes.
        mean_sq.append((d if info.activation == "relu" else d * d).mean())
    return J * J * torch.stack(mean_sq)


def layer_params(params: Params, info: LayerInfo) -> Params:
    """One hidden layer's own parameters ("weight", and "bias" where it has one)."""
    prefix = info.weight.removesuffix("weight")
    out = {"weight": params[info.weight]}
    if prefix + "bias" in params:
        out["bias"] = params[prefix + "bias"]
    return out


def layer_map(model: EdgeNet, params: Params, info: LayerInfo, x: Tensor) -> Tensor:
    """The hidden layer's map f_l(x_l) = φ(W_l x_l + b_l) under `params`."""
    layer = model.layers[info.index]
    h = functional_call(layer, layer_params(params, info), (x,))
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
    _, pullback = vjp(lambda x: layer_map(model, params, info, x), x_in)[:2]
    estimates = []
    for k in range(vectors.shape[0]):
        (g,) = pullback(vectors[k])
        estimates.append((g * g).flatten(1).sum(dim=1).mean())
    return torch.stack(estimates).mean()


def network_apjn(model: nn.Module, params: Params, x: Tensor, vectors: Tensor) -> Tensor:
    """APJN of the whole network, input to logits: E_x ‖∂f/∂x‖_F² / N_out, by vector–Jacobian
    products against `vectors` (n_vectors, batch, N_out), as `apjn_hutchinson` does per layer.

    A property of the function the network computes, not of its parametrisation: where
    BatchNorm makes the function independent of the scale of the weights before it (so J is a
    gauge there), this is unchanged by that scale. With BatchNorm on batch statistics the
    examples of a batch are coupled, and the estimate also counts ∂f_i/∂x_j for i ≠ j, terms of
    order 1/batch. Cost: one forward and n_vectors backward passes of the network on the batch.
    """
    _, pullback = vjp(lambda inputs: functional_call(model, params, (inputs,)), x)[:2]
    estimates = []
    for k in range(vectors.shape[0]):
        (g,) = pullback(vectors[k])
        estimates.append((g * g).flatten(1).sum(dim=1).mean())
    return torch.stack(estimates).mean()


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
