"""The population-batched probe engine against the plain PyTorch loop, on small real data."""

import json
import os
import platform
import resource
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from app.schemas import CNNSpec, ConvBlockSpec, DatasetSpec, MLPSpec, TorchvisionSpec
from worker.data import Dataset, load_dataset
from worker.probe import (
    ProbeConfig,
    ProbeProgress,
    ProbeRecord,
    ProbeResult,
    cpu_model,
    default_intervals,
    device_name,
    init_model,
    judge,
    keep_freed_memory_on_heap,
    run_population,
    train_sequential,
)

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("EDGETUNE_DATA_ROOT", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These nets are tiny: with several threads OpenMP's synchronisation costs more than the
    arithmetic, and far more on a shared machine whose other cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DatasetSpec(name="digits"), [], seed=0)


@pytest.fixture(scope="module")
def fmnist_small() -> Dataset:
    if not (DATA_ROOT / "fashion-mnist").is_dir():
        pytest.skip(f"Fashion-MNIST not found under {DATA_ROOT} (set EDGETUNE_DATA_ROOT)")
    return load_dataset(
        DatasetSpec(name="fashion-mnist", max_train_samples=4096), [DATA_ROOT], seed=0
    )


MLP = MLPSpec(hidden=[32, 32])
CNN = CNNSpec(blocks=[ConvBlockSpec(channels=4, kernel=3, pool=2)], hidden=[16])


def mixed_configs(steps: int) -> list[ProbeConfig]:
    """Different lr, momentum (including none), weight decay (including none) and seed."""
    return [
        ProbeConfig(learning_rate=0.05, momentum=0.9, weight_decay=0.0, batch_size=16, seed=0,
                    steps=steps),
        ProbeConfig(learning_rate=0.1, momentum=0.0, weight_decay=1e-3, batch_size=16, seed=1,
                    steps=steps),
        ProbeConfig(learning_rate=0.02, momentum=0.5, weight_decay=5e-3, batch_size=16, seed=2,
                    steps=steps),
        ProbeConfig(learning_rate=0.2, momentum=0.95, weight_decay=1e-4, batch_size=16, seed=3,
                    steps=steps),
    ]  # fmt: skip


def assert_same_params(result: ProbeResult, model: torch.nn.Module) -> None:
    assert result.params is not None
    state = model.state_dict()
    assert set(result.params) == set(state)
    for name, value in result.params.items():
        torch.testing.assert_close(value, state[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_population_equals_sequential_sgd(spec, digits):
    configs = mixed_configs(steps=50)  # 50 steps of 16 = 0.6 epoch of digits' 1318 examples
    results = run_population(
        spec, digits, configs, device=CPU, measure_every=10, eval_every=25, keep_params=True
    )
    for config, result in zip(configs, results, strict=True):
        assert result.outcome == "completed" and result.steps_done == 50
        model = train_sequential(spec, digits, config, device=CPU)
        assert_same_params(result, model)
        # It trained: the weights moved well beyond the tolerance from their initial values.
        initial = init_model(spec, digits, config.seed).state_dict()
        moved = max((initial[k] - v).abs().max().item() for k, v in result.params.items())
        assert moved > 1e-2
        assert [r.step for r in result.records] == [0, 10, 20, 25, 30, 40, 50]
        evals = [r.step for r in result.records if r.val_loss is not None]
        assert evals == [0, 25, 50]
        assert all(r.apjn is not None for r in result.records if r.step in evals)


ADAMW_RUNS = [(1e-3, 0.0, 40), (3e-3, 0.05, 20), (1e-2, 0.01, 40)]  # (η, wd, steps)


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_population_equals_sequential_adamw(spec, digits):
    # Decoupled decay on some members, and a member dropped midway (the state is compacted).
    configs = [
        ProbeConfig(learning_rate=lr, momentum=0.0, weight_decay=wd, batch_size=16, seed=seed,
                    steps=steps, optimizer="adamw")
        for seed, (lr, wd, steps) in enumerate(ADAMW_RUNS)
    ]  # fmt: skip
    results = run_population(spec, digits, configs, device=CPU, measure_every=10, keep_params=True)
    for config, result in zip(configs, results, strict=True):
        assert result.outcome == "completed" and result.steps_done == config.steps
        assert_same_params(result, train_sequential(spec, digits, config, device=CPU))
    with pytest.raises(ValueError, match="same optimizer"):
        run_population(MLP, digits, [configs[0], mixed_configs(5)[1]], device=CPU)
    with pytest.raises(ValueError, match="momentum"):
        ProbeConfig(1e-3, 0.9, 0.0, 16, 0, 5, optimizer="adamw")


def test_population_without_momentum_or_decay_equals_sequential_sgd(digits):
    # No member with momentum or decay: the engine skips those passes (and the buffers).
    configs = [
        ProbeConfig(learning_rate=lr, momentum=0.0, weight_decay=0.0, batch_size=16, seed=seed,
                    steps=30)
        for seed, lr in enumerate((0.05, 0.2))
    ]  # fmt: skip
    results = run_population(MLP, digits, configs, device=CPU, measure_every=0, keep_params=True)
    for config, result in zip(configs, results, strict=True):
        assert [r.step for r in result.records] == [0, 30]
        assert_same_params(result, train_sequential(MLP, digits, config, device=CPU))


def test_paper_model_J_squared_grows(fmnist_small):
    """science.md §3: from J = 0.5, J² grows while ordered, faster for a larger η/((1−α)B)."""
    configs = [
        ProbeConfig(learning_rate=lr, momentum=0.9, weight_decay=0.0, batch_size=32, seed=0,
                    steps=128)
        for lr in (0.02, 0.08)
    ]  # fmt: skip
    slow, fast = run_population(MLPSpec(), fmnist_small, configs, device=CPU, measure_every=16)
    for result in (slow, fast):
        assert result.outcome == "completed"
        first, last = result.records[0], result.records[-1]
        assert first.J[0] == pytest.approx(0.5, rel=0.01) and abs(first.J0[0]) < 0.05
        assert first.chi is not None and first.lyapunov is not None and first.lyapunov < 0
        j2 = [r.J[0] ** 2 for r in result.records]
        assert all(b > a for a, b in zip(j2, j2[1:], strict=False)), j2
        assert last.train_loss < first.train_loss
        assert last.val_accuracy is not None and last.val_accuracy > 0.6
    growth = [r.records[-1].J[0] ** 2 - r.records[0].J[0] ** 2 for r in (slow, fast)]
    assert growth[1] > 2 * growth[0] > 0


@pytest.mark.parametrize(
    ("activation", "lr", "reason"),
    [
        ("tanh", 1e3, "J exploded (J_1 = "),
        ("relu", 1e10, "non-finite loss at step 2"),
        ("tanh", 1e30, "non-finite order parameter at step 5"),
    ],
)
def test_divergence_is_an_outcome(activation, lr, reason, digits):
    spec = MLPSpec(hidden=[32, 32], activation=activation)
    configs = [
        ProbeConfig(learning_rate=lr, momentum=0.9, weight_decay=0.0, batch_size=16, seed=0,
                    steps=40),
        ProbeConfig(learning_rate=0.05, momentum=0.9, weight_decay=0.0, batch_size=16, seed=1,
                    steps=40),
    ]  # fmt: skip
    bad, good = run_population(spec, digits, configs, device=CPU, measure_every=5, eval_every=20)
    assert bad.outcome == "diverged" and bad.reason is not None
    assert bad.reason.startswith(reason)
    assert bad.steps_done == 5  # noticed at the first measurement after it happened
    assert good.outcome == "completed" and good.steps_done == 40 and good.reason is None
    assert good.records[-1].step == 40
    # A diverged probe still serialises as strict JSON: its records hold only finite numbers.
    for result in (bad, good):
        text = json.dumps(result.to_dict(), allow_nan=False)
        assert ProbeResult.from_dict(json.loads(text)) == result


def test_on_progress_false_cancels(digits):
    seen: list[ProbeProgress] = []

    def on_progress(progress: ProbeProgress) -> bool:
        seen.append(progress)
        return progress.step < 10

    results = run_population(
        MLP, digits, mixed_configs(steps=50), device=CPU, measure_every=5, on_progress=on_progress
    )
    assert [p.step for p in seen] == [0, 5, 10]
    assert seen[-1].steps_total == 50 and seen[-1].results_so_far == [None] * 4
    assert all(len(r) == 3 for r in seen[-1].records)
    for result in results:
        assert result.outcome == "cancelled" and result.steps_done == 10
        assert result.reason == "cancelled at step 10"
        assert [r.step for r in result.records] == [0, 5, 10]


def test_stop_when_freezes_a_member_and_members_end_at_their_own_steps(digits):
    configs = mixed_configs(steps=30)
    configs[2] = replace(configs[2], steps=20)
    asked: list[tuple[int, int]] = []

    def stop_when(member: int, records: list[ProbeRecord]) -> bool:
        asked.append((member, records[-1].step))
        return member == 1 and records[-1].step >= 10

    finished_seen: list[list[str | None]] = []

    def on_progress(progress: ProbeProgress) -> bool:
        finished_seen.append([r.outcome if r else None for r in progress.results_so_far])
        return True

    results = run_population(
        MLP,
        digits,
        configs,
        device=CPU,
        measure_every=5,
        stop_when=stop_when,
        keep_params=True,
        on_progress=on_progress,
    )
    assert [r.outcome for r in results] == ["completed", "stopped", "completed", "completed"]
    assert [r.steps_done for r in results] == [30, 10, 20, 30]
    assert results[1].records[-1].step == 10 and results[2].records[-1].step == 20
    assert (1, 15) not in asked  # a stopped member is no longer asked
    assert finished_seen[2] == [None, "stopped", None, None]  # reported as soon as it stops
    # The stopped member's parameters froze at step 10 while the others trained on.
    assert_same_params(results[1], train_sequential(MLP, digits, configs[1], device=CPU, steps=10))
    for i in (0, 2, 3):
        assert_same_params(results[i], train_sequential(MLP, digits, configs[i], device=CPU))


def test_evaluations_at_the_end_only_where_each_member_ends(digits):
    configs = mixed_configs(steps=30)
    configs[2] = replace(configs[2], steps=20)

    def stop_when(member: int, records: list[ProbeRecord]) -> bool:
        return member == 1 and records[-1].step >= 10

    def run(**kwargs: object) -> list[ProbeResult]:
        return run_population(
            MLP, digits, configs, device=CPU, measure_every=5, stop_when=stop_when, **kwargs
        )

    full = run(eval_every=5)
    last = run(eval_every=5, evaluate_last_only=True)
    for a, b in zip(full, last, strict=True):
        assert a.outcome == b.outcome and [r.step for r in a.records] == [r.step for r in b.records]
        assert [r.J for r in a.records] == [r.J for r in b.records]  # the training is the same
        # Evaluated where it ends, completed or stopped, and where a member it trains with
        # completes (one vmapped evaluation serves them all); nowhere else.
        evaluated = [r.step for r in b.records if r.val_loss is not None]
        assert evaluated[-1] == b.records[-1].step and set(evaluated) <= {20, 30, 10}
        assert b.records[-1].val_loss == a.records[-1].val_loss
        assert b.records[-1].val_accuracy == a.records[-1].val_accuracy
    assert last[1].outcome == "stopped" and last[1].records[-1].step == 10


def test_same_configs_give_identical_records(digits):
    configs = mixed_configs(steps=20)
    first = run_population(CNN, digits, configs, device=CPU, measure_every=5, eval_every=10)
    second = run_population(CNN, digits, configs, device=CPU, measure_every=5, eval_every=10)
    assert [r.records for r in first] == [r.records for r in second]
    # A member's trajectory does not depend on who else is in the population.
    alone = run_population(CNN, digits, configs[2:3], device=CPU, measure_every=5, eval_every=10)
    for a, b in zip(alone[0].records, first[2].records, strict=True):
        assert a.step == b.step
        torch.testing.assert_close(torch.tensor(a.J), torch.tensor(b.J), atol=1e-5, rtol=0)


def test_chi_with_the_evaluations_only_leaves_the_training_unchanged(digits):
    configs = mixed_configs(steps=20)
    every = run_population(MLP, digits, configs, device=CPU, measure_every=2, eval_every=10)
    sparse = run_population(
        MLP, digits, configs, device=CPU, measure_every=2, eval_every=10, chi_every_record=False
    )
    for full, thin in zip(every, sparse, strict=True):
        assert [r.step for r in thin.records] == [r.step for r in full.records]
        assert [(r.J, r.J0, r.train_loss, r.val_loss) for r in thin.records] == [
            (r.J, r.J0, r.train_loss, r.val_loss) for r in full.records
        ]
        # χ at step 0 and with every evaluation (the last record included), nowhere else.
        with_chi = [r.step for r in thin.records if r.chi is not None]
        assert with_chi == [r.step for r in full.records if r.val_loss is not None]
        assert with_chi[0] == 0 and with_chi[-1] == full.records[-1].step
        assert len(with_chi) < len(thin.records)
        for a, b in zip(thin.records, full.records, strict=True):
            assert a.chi is None or (a.chi == b.chi and a.lyapunov == b.lyapunov)


def test_torchvision_population_records_J(digits):
    configs = [
        ProbeConfig(learning_rate=0.05, momentum=0.9, weight_decay=1e-4, batch_size=16, seed=s,
                    steps=3)
        for s in (0, 1)
    ]  # fmt: skip
    spec = TorchvisionSpec(name="shufflenet_v2_x0_5")
    results = run_population(spec, digits, configs, device=CPU, measure_every=1)
    n_layers = len(results[0].records[0].J)
    assert n_layers > 40  # every conv and linear layer except the read-out
    for result in results:
        assert result.outcome == "completed"
        assert [r.step for r in result.records] == [0, 1, 2, 3]
        assert all(r.chi is None and r.lyapunov is None and r.apjn is None for r in result.records)
        assert all(len(r.J) == n_layers for r in result.records)
        assert result.records[-1].val_loss is not None
    assert results[0].records[-1].J != results[0].records[0].J  # the weights trained


def test_population_rejects_mixed_batch_sizes(digits):
    configs = mixed_configs(steps=5)
    configs[1] = replace(configs[1], batch_size=32)
    with pytest.raises(ValueError, match="batch size"):
        run_population(MLP, digits, configs, device=CPU)


def test_default_intervals_on_fashion_mnist():
    # 55,000 training examples at B = 32: 1718 steps per epoch → ~20 measurements, 2 evaluations.
    measure_every, eval_every = default_intervals(55_000, 32)
    assert measure_every == 86 and eval_every == 860
    # A tiny dataset: the floors keep measurement cheap relative to training.
    assert default_intervals(1318, 16) == (128, 1024)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_freed_population_sized_tensors_stay_on_the_heap() -> None:
    # What a CPU population does every step: allocate, fill and free tensors of tens of MB.
    # Unmapped on free (glibc's default), each one page-faults all of its pages back in.
    def faults_for_ten_tensors() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.ones(16 * 1024 * 1024)  # 64 MiB, 16k pages of 4 KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert keep_freed_memory_on_heap() and keep_freed_memory_on_heap()
    faults_for_ten_tensors()  # the heap grows once
    assert faults_for_ten_tensors() < 16 * 1024  # not 10 × 16k: the pages are reused


def test_validation_uses_the_requested_number_of_examples(digits: Dataset) -> None:
    config = ProbeConfig(0.05, 0.9, 0.0, 32, 0, 10)
    for n in (7, 10_000):
        [result] = run_population(
            MLPSpec(hidden=[16]),
            digits,
            [config],
            device=CPU,
            measure_every=5,
            eval_every=5,
            val_examples=n,
        )
        used = min(n, int(digits.x_val.shape[0]))
        accuracies = [r.val_accuracy for r in result.records if r.val_accuracy is not None]
        assert accuracies and all(abs(a * used - round(a * used)) < 1e-4 for a in accuracies)
    assert used > 7  # digits has more validation examples than 7: the cap did something


def test_device_name_says_what_runs_the_probes() -> None:
    name = device_name(CPU)
    assert name.endswith(f", {os.cpu_count()} cores") and name.startswith(cpu_model())
    assert cpu_model() not in ("", "unknown")  # Linux: from /proc/cpuinfo


# --- judge: what becomes of a member after a measurement (no training needed) ----------------


def _record(step: int = 10, J: float = 0.6, **kw: object) -> ProbeRecord:
    values: dict[str, object] = {
        "step": step,
        "epoch": step / 100,
        "J": [J, 0.5],
        "J0": [0.0, 0.0],
        "chi": [0.3, 0.2],
        "lyapunov": -0.7,
        "apjn": None,
        "train_loss": 2.0,
        "val_loss": None,
        "val_accuracy": None,
    }
    values.update(kw)
    return ProbeRecord(**values)  # type: ignore[arg-type]


def test_judge_lets_a_healthy_member_train_on():
    assert judge(_record(), steps=50, loss_failed_at=None) is None
    assert judge(_record(), steps=50, loss_failed_at=None, stop=lambda: False) is None


def test_judge_divergence_comes_first_in_a_fixed_order():
    nan = float("nan")
    # A non-finite loss outranks everything, even the member's last step.
    assert judge(_record(step=50, J=nan), steps=50, loss_failed_at=47) == (
        "diverged",
        "non-finite loss at step 47",
    )
    assert judge(_record(chi=[nan, 0.2]), steps=50, loss_failed_at=None) == (
        "diverged",
        "non-finite order parameter at step 10",
    )
    assert judge(_record(val_loss=float("inf")), steps=50, loss_failed_at=None) == (
        "diverged",
        "non-finite order parameter at step 10",
    )
    assert judge(_record(J=2e3), steps=50, loss_failed_at=None) == (
        "diverged",
        "J exploded (J_0 = 2e+03) at step 10",
    )


def test_judge_completes_at_the_last_step_before_asking_the_stop_rule():
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return True

    assert judge(_record(step=50), steps=50, loss_failed_at=None, stop=stop) == ("completed", None)
    assert asked == []  # not asked once something else decided
    assert judge(_record(J=2e3), steps=50, loss_failed_at=None, stop=stop)[0] == "diverged"
    assert asked == []
    assert judge(_record(step=20), steps=50, loss_failed_at=None, stop=stop) == (
        "stopped",
        "stop_when at step 20",
    )
    assert asked == [1]


def test_a_stored_result_with_extra_keys_reads_back(digits):
    [result] = run_population(MLP, digits, [ProbeConfig(0.05, 0.9, 0.0, 16, 0, 5)], device=CPU)
    stored = json.loads(json.dumps({**result.to_dict(), "order": {"kind": "chi"}}))
    assert ProbeResult.from_dict(stored) == result


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_a_finished_population_frees_its_data_without_the_cycle_collector(spec) -> None:
    """The population once kept a vmap of its own bound method: a reference cycle that held the
    dataset and every member's weights until the cyclic collector happened to run, which grew a
    worker by ≈220 MB per Fashion-MNIST job. Once run_population returns, dropping the dataset
    must free it by reference counting alone."""
    import gc
    import weakref

    data = load_dataset(DatasetSpec(name="digits"), [], seed=0)
    alive = weakref.ref(data.x_train)
    gc.collect()
    gc.disable()
    try:
        results = run_population(spec, data, mixed_configs(steps=20), device=CPU)
        assert len(results) == 4
        del data
        assert alive() is None, "the dataset outlived the population (a reference cycle)"
    finally:
        gc.enable()
