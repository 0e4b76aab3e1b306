"""Known-answer tests for the order parameters (worker/order.py, references in tests/theory.py),
all on CPU.

Every expected value here comes from outside the code under test: the law the random weights were
drawn from, the Gauss–Hermite-free Monte-Carlo integral, the exact Jacobian, or the theory of the
transition (science.md §2).
"""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev, stack_module_state, vmap

from app.schemas import CNNSpec, ConvBlockSpec, InitSpec, MLPSpec, TorchvisionSpec
from edgetune.nets import EdgeNet, build_model, layer_infos, seeded_model
from tests.theory import (
    apjn_exact,
    iterated_map_norm,
    mean_field_chi,
    random_coupling_matrix,
    twin_trajectory_distance,
)
from worker.order import (
    apjn_hutchinson,
    coupling,
    couplings,
    lyapunov_summary,
    measure,
    network_apjn,
    random_unit_vectors,
    summary_layers,
    susceptibilities,
)


def _mlp(
    input_dim: int,
    hidden: list[int],
    activation: str = "tanh",
    J: float = 0.5,
    seed: int = 0,
    hidden_bias: bool = False,
) -> EdgeNet:
    torch.manual_seed(seed)
    spec = MLPSpec(
        hidden=hidden,
        activation=activation,
        hidden_bias=hidden_bias,
        init=InitSpec(scheme="edge", J=J),
    )
    model = build_model(spec, (input_dim,), 10)
    assert isinstance(model, EdgeNet)
    return model


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


# --- J and J0 from random Gaussian matrices -----------------------------------------------------


@pytest.mark.parametrize("J", [0.3, 0.5, 1.0, 1.7, 3.0])
@pytest.mark.parametrize(
    "shape",
    [(784, 784), (300, 700), (700, 300), (128, 64, 3, 3)],
    ids=["square", "wide-in", "wide-out", "conv"],
)
def test_coupling_recovers_J_of_a_gaussian_matrix(J, shape):
    g = torch.Generator().manual_seed(hash((J, shape)) % 2**31)
    fan_in = math.prod(shape[1:])
    w = J / math.sqrt(fan_in) * torch.randn(shape, generator=g)
    j, j0 = coupling(w, fan_in)
    assert abs(float(j) - J) / J < 0.01
    # J0 = fan_in·mean: its sampling std is J·√(fan_in/numel).
    assert abs(float(j0)) < 4 * J * math.sqrt(fan_in / w.numel())


@pytest.mark.parametrize("J, J0", [(1.0, 5.0), (0.5, -8.0), (1.5, 20.0)])
def test_coupling_recovers_J0_and_J_of_a_shifted_matrix(J, J0):
    # The SK coupling N(J0/N, J²/N); the mean must not leak into J (population std about the mean).
    n = 2000
    w = random_coupling_matrix(n, J, J0, generator=torch.Generator().manual_seed(7))
    j, j0 = coupling(w, n)
    assert abs(float(j) - J) / J < 0.01
    assert abs(float(j0) - J0) / abs(J0) < 0.01


def test_edge_init_gives_the_spec_J_per_layer():
    model = _mlp(300, [500, 200, 200], J=0.8)
    J, J0 = couplings(_params(model), layer_infos(model))
    assert J.shape == (3,) and J0.shape == (3,)
    assert torch.allclose(J, torch.full((3,), 0.8), rtol=0.01)
    assert J0.abs().max() < 0.1


# --- χ against the mean-field integral ------------------------------------------------------------


def test_mean_field_quadrature_matches_monte_carlo():
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sigma_w, act, q0 in [(0.5, "tanh", 1.0), (1.5, "tanh", 0.7), (1.4, "relu", 1.0)]:
        qs, chis = mean_field_chi(sigma_w, act, q0, depth=3)
        assert qs[0] == pytest.approx(sigma_w**2 * q0, rel=1e-12)
        for layer in range(3):
            # The quadrature's own q_l feeds each layer, so Monte-Carlo error does not compound.
            h = math.sqrt(qs[layer]) * z
            if act == "tanh":
                dphi2, phi2 = (1 - torch.tanh(h) ** 2) ** 2, torch.tanh(h) ** 2
            else:
                dphi2, phi2 = (h > 0).double(), torch.relu(h) ** 2
            # 2M samples: Monte-Carlo relative error ≲ 1e-3.
            assert chis[layer] == pytest.approx(sigma_w**2 * float(dphi2.mean()), rel=4e-3)
            if layer < 2:
                assert qs[layer + 1] == pytest.approx(sigma_w**2 * float(phi2.mean()), rel=4e-3)
    # Closed forms: ReLU has E[φ'²] = ½ at any q; linear has χ = σ_w² and q_l = σ_w^(2l)·q0.
    for n_quad in (200, 201):  # an odd rule would put a node on ReLU's kink
        _, chis = mean_field_chi(1.4, "relu", 1.0, depth=2, n_quad=n_quad)
        assert chis == pytest.approx([0.98, 0.98], rel=1e-6)
    qs, chis = mean_field_chi(0.9, "linear", 2.0, depth=3)
    assert qs == pytest.approx([0.81 * 2, 0.81**2 * 2, 0.81**3 * 2], rel=1e-9)
    assert chis == pytest.approx([0.81] * 3, rel=1e-9)


@pytest.mark.parametrize("sigma_w", [0.5, 1.0, 1.5])
def test_chi_of_a_wide_random_tanh_net_matches_mean_field(sigma_w):
    width, depth = 2000, 3
    model = _mlp(width, [width] * depth, J=sigma_w, seed=3)
    params, infos = _params(model), layer_infos(model)
    x = torch.randn(256, width, generator=torch.Generator().manual_seed(4))
    out = measure(model, params, x, infos)
    q0 = float((x * x).mean())
    _, expected = mean_field_chi(sigma_w, "tanh", q0, depth)
    measured = out["chi"].numpy()
    np.testing.assert_allclose(measured, expected, rtol=0.05)
    # The mean-field values are not trivially close to σ_w² (the saturation of tanh matters).
    if sigma_w > 1:
        assert expected[0] < 0.8 * sigma_w**2


def test_chi_of_relu_sits_at_half_J_squared():
    model = _mlp(500, [500, 500], activation="relu", J=1.4, seed=5)
    out = measure(model, _params(model), torch.randn(256, 500), layer_infos(model))
    np.testing.assert_allclose(out["chi"].numpy(), [0.98, 0.98], rtol=0.03)


def test_susceptibilities_of_hand_computed_preactivations():
    infos = layer_infos(_mlp(4, [3, 3]))
    preacts = [torch.zeros(2, 3), torch.full((2, 3), 0.5)]
    chi = susceptibilities(preacts, torch.tensor([0.5, 2.0]), infos)
    sech2 = 1 - math.tanh(0.5) ** 2
    assert torch.allclose(chi, torch.tensor([0.25, 4 * sech2**2]))


# --- APJN: Hutchinson against the exact Jacobian --------------------------------------------------


def _cnn(seed: int = 0) -> EdgeNet:
    torch.manual_seed(seed)
    spec = CNNSpec(
        blocks=[ConvBlockSpec(channels=4, kernel=3), ConvBlockSpec(channels=4, kernel=3, pool=2)],
        activation="tanh",
        hidden=[16],
        init=InitSpec(scheme="edge", J=1.2),
    )
    model = build_model(spec, (1, 8, 8), 3)
    assert isinstance(model, EdgeNet)
    return model


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: _mlp(20, [30, 30], activation="tanh", J=1.3, seed=1),
        lambda: _mlp(20, [30, 25], activation="relu", J=1.4, seed=2, hidden_bias=True),
        _cnn,
    ],
    ids=["mlp-tanh", "mlp-relu", "cnn"],
)
def test_hutchinson_apjn_matches_exact_jacobian(make_model):
    model = make_model()
    params, infos = _params(model), layer_infos(model)
    shape = (1, 8, 8) if model.n_conv else (20,)
    g = torch.Generator().manual_seed(11)
    x = torch.randn((8, *shape), generator=g)
    _, inputs, preacts = model(x, trace=True)
    for info, x_in, h in zip(infos, inputs, preacts, strict=True):
        vectors = random_unit_vectors(400, x.shape[0], tuple(h.shape[1:]), generator=g)
        x_in = x_in.detach()
        exact = float(apjn_exact(model, params, info, x_in))
        estimate = float(apjn_hutchinson(model, params, info, x_in, vectors))
        assert estimate == pytest.approx(exact, rel=0.05), info


def test_apjn_exact_of_a_linear_layer_is_the_frobenius_norm():
    # φ = identity: the layer Jacobian is W itself, whatever the input.
    model = _mlp(6, [4], activation="linear", J=1.0)
    params, (info,) = _params(model), layer_infos(model)
    expected = float((params["layers.0.weight"] ** 2).sum() / 4)
    assert float(apjn_exact(model, params, info, torch.randn(3, 6))) == pytest.approx(expected)


def test_apjn_of_a_wide_layer_equals_chi():
    # Mean-field: ‖diag(φ'(h)) W‖_F²/N_out → J²·E[φ'(h)²] = χ.
    model = _mlp(500, [500], J=1.2, seed=6)
    params, infos = _params(model), layer_infos(model)
    x = torch.randn(64, 500)
    vectors = [random_unit_vectors(8, 64, (500,), generator=torch.Generator().manual_seed(0))]
    out = measure(model, params, x, infos, vectors)
    assert float(out["apjn"][0]) == pytest.approx(float(out["chi"][0]), rel=0.03)


# --- measure under vmap over a population ---------------------------------------------------------


@pytest.mark.parametrize("make_model", [lambda s: _mlp(20, [24, 24], seed=s), _cnn])
def test_measure_under_vmap_equals_per_member(make_model):
    members = [make_model(seed) for seed in range(4)]
    for i, m in enumerate(members):  # different J per member, so the test can tell them apart
        with torch.no_grad():
            for layer in m.layers:
                layer.weight.mul_(0.5 + 0.3 * i)
    base, infos = members[0], layer_infos(members[0])
    stacked, _ = stack_module_state(members)
    stacked = {k: v.detach() for k, v in stacked.items()}
    shape = (1, 8, 8) if base.n_conv else (20,)
    x = torch.randn((16, *shape))
    vectors = [
        random_unit_vectors(3, 16, tuple(h.shape[1:]))
        for h in functional_call(base, _params(base), (x,), {"trace": True})[2]
    ]
    batched = vmap(lambda p: measure(base, p, x, infos, vectors))(stacked)
    for i, m in enumerate(members):
        single = measure(base, _params(m), x, infos, vectors)
        assert set(single) == set(batched) == {"J", "J0", "chi", "lyapunov", "apjn"}
        for key, value in single.items():
            torch.testing.assert_close(batched[key][i], value, rtol=1e-5, atol=1e-6)
    assert batched["J"][3, 0] > 1.5 * batched["J"][0, 0]


# --- the iterated map and the twin trajectories ---------------------------------------------------


def test_iterated_map_norm_of_one_square_tanh_layer():
    n = 300
    x0 = torch.randn(16, n, generator=torch.Generator().manual_seed(0))
    ordered = _mlp(n, [n], J=0.5, seed=8)
    (info,) = layer_infos(ordered)
    J = float(couplings(_params(ordered), [info])[0][0])
    # Ordered: the map falls into the fixed point 0, where φ' = 1 and the norm is J itself.
    assert iterated_map_norm(ordered, _params(ordered), info, x0) == pytest.approx(J, rel=0.01)
    assert pytest.approx(0.5, rel=0.02) == J
    # Chaotic: the trajectory stays on an O(1) attractor whose Jacobian norm exceeds the edge
    # (mean field: √χ* ≈ 1.07 at J = 1.5).
    chaotic = _mlp(n, [n], J=1.5, seed=8)
    norm = iterated_map_norm(chaotic, _params(chaotic), info, x0)
    assert 1.0 < norm < 1.5


def test_iterated_map_norm_refuses_a_non_square_layer():
    model = _mlp(10, [12])
    with pytest.raises(ValueError, match="not square"):
        iterated_map_norm(model, _params(model), layer_infos(model)[0], torch.randn(2, 10))


def test_iterated_map_norm_of_a_square_conv_layer():
    torch.manual_seed(0)
    spec = CNNSpec(
        blocks=[ConvBlockSpec(channels=3, kernel=3)] * 2,
        activation="tanh",
        init=InitSpec(scheme="edge", J=0.5),
    )
    model = build_model(spec, (3, 10, 10), 2)
    assert isinstance(model, EdgeNet)
    params, infos = _params(model), layer_infos(model)
    # 3 → 3 channels, stride 1, odd kernel: the layer keeps its shape, so it can be iterated.
    assert infos[1].square
    J = float(couplings(params, infos)[0][1])
    x0 = torch.randn(4, 3, 10, 10)
    rng = torch.get_rng_state()
    norm = iterated_map_norm(model, params, infos[1], x0)
    assert torch.equal(torch.get_rng_state(), rng)  # measuring leaves the training RNG alone
    # At the fixed point 0 the Jacobian is the conv itself; zero padding drops the taps that fall
    # outside the 10×10 map, a mean fraction 1 − (28/30)² of them.
    assert norm == pytest.approx(J * 28 / 30, rel=0.05)


def test_twin_trajectory_distance_jumps_at_the_edge():
    n = 500
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, generator=g)
    ordered = twin_trajectory_distance(random_coupling_matrix(n, 0.8, generator=g), x0, generator=g)
    chaotic = twin_trajectory_distance(random_coupling_matrix(n, 1.5, generator=g), x0, generator=g)
    assert ordered < 1e-4
    assert chaotic > 0.1


# --- network summary ------------------------------------------------------------------------------


def test_summary_of_the_papers_net_is_its_one_square_layer():
    model = _mlp(784, [784], J=0.5)
    infos = layer_infos(model)
    assert infos[0].square and summary_layers(infos) == [0]
    out = measure(model, _params(model), torch.rand(64, 784), infos)
    assert float(out["lyapunov"]) == pytest.approx(0.5 * math.log(float(out["chi"][0])))
    assert float(out["lyapunov"]) < 0  # J = 0.5: ordered


def test_summary_of_a_three_layer_net_skips_the_input_layer():
    model = _mlp(20, [50, 50, 50], J=1.0)
    infos = layer_infos(model)
    assert summary_layers(infos) == [1, 2]
    chi = torch.tensor([4.0, 1.0, math.e**2])
    assert float(lyapunov_summary(chi, summary_layers(infos))) == pytest.approx(0.5)
    # A single non-square layer is the only candidate: it stands in rather than nothing.
    assert summary_layers(layer_infos(_mlp(20, [50]))) == [0]


# --- The network's APJN: exact, and blind to the weight scale BatchNorm removes -----------------


def _basis_vectors(batch: int, n_out: int) -> torch.Tensor:
    """Every output direction for every example: Hutchinson's average over them is exact."""
    return torch.eye(n_out).unsqueeze(1).expand(n_out, batch, n_out).contiguous()


def test_network_apjn_is_the_input_output_jacobians_norm():
    model = _mlp(12, [16, 16], activation="tanh", J=1.3, seed=3)
    params = _params(model)
    x = torch.randn((6, 12), generator=torch.Generator().manual_seed(5))

    def f(one: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(model, params, (one.unsqueeze(0),))
        return out.squeeze(0)

    jacobians = vmap(jacrev(f))(x)  # (batch, 10, 12)
    exact = float((jacobians**2).sum(dim=(1, 2)).mean() / 10)
    estimate = float(network_apjn(model, params, x, _basis_vectors(6, 10)))
    assert estimate == pytest.approx(exact, rel=1e-5)


def _scaled(params: dict[str, torch.Tensor], names: list[str], factor: float) -> dict:
    return {k: v * factor if k in names else v for k, v in params.items()}


def test_network_apjn_under_batchnorm_ignores_the_weight_scale_that_moves_J():
    # resnet18 as the probes train it (BatchNorm on batch statistics): every convolution feeds a
    # BatchNorm, so scaling its weights leaves the function, and the network's APJN, unchanged.
    model = seeded_model(TorchvisionSpec(name="resnet18"), (1, 28, 28), 10, seed=0)
    params = _params(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    names = [f"{n}.weight" for n in convs]
    x = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(7))
    vectors = _basis_vectors(8, 10)
    before = float(network_apjn(model, params, x, vectors))
    after = float(network_apjn(model, _scaled(params, names, 3.0), x, vectors))
    assert after == pytest.approx(before, rel=2e-3)
    infos = layer_infos(model)
    j_before, _ = couplings(params, infos)
    j_after, _ = couplings(_scaled(params, names, 3.0), infos)
    conv_layers = [i for i, info in enumerate(infos) if info.weight in names]
    assert conv_layers and torch.allclose(j_after[conv_layers], 3 * j_before[conv_layers])


def test_network_apjn_without_batchnorm_moves_with_the_weight_scale():
    # The control: no normalisation, so the same scaling changes the function and the APJN.
    model = _mlp(12, [16, 16], activation="tanh", J=0.8, seed=4)
    params = _params(model)
    names = [info.weight for info in layer_infos(model)]
    x = torch.randn((6, 12), generator=torch.Generator().manual_seed(5))
    vectors = _basis_vectors(6, 10)
    before = float(network_apjn(model, params, x, vectors))
    after = float(network_apjn(model, _scaled(params, names, 3.0), x, vectors))
    assert after > 2 * before
