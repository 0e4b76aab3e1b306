"""The verification run (spec `verify: true`): the recommended configuration trained for its
epochs, its measured order parameter beside the predicted one, and its test loss and accuracy.

Costs one full training run, the same as the user's own; the probes cost budget.probe_fraction of
one. Reports through `on_progress` like the probes (returning False cancels it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.schemas import RecommendationSpec, Verification, VerificationTrajectory
from worker.data import Dataset
from worker.law import Choice, order_kind, order_series, trajectory
from worker.probe import ProbeConfig, ProbeProgress, ProbeResult, init_model, run_population

TEST_CHUNK = 1000


def verify(
    spec: RecommendationSpec,
    dataset: Dataset,
    choice: Choice,
    y0: float,
    *,
    device: torch.device,
    on_progress: Callable[[ProbeProgress], bool] | None = None,
) -> Verification:
    """Train the recommended configuration for its epochs; measured beside the prediction."""
    steps = max(1, round(choice.epochs * dataset.train_size / choice.batch_size))
    config = ProbeConfig(
        choice.learning_rate,
        choice.momentum,
        choice.weight_decay,
        choice.batch_size,
        spec.seed,
        steps,
        nesterov=spec.optimizer.nesterov,
        optimizer=spec.optimizer.type,
        schedule=choice.schedule,
        schedule_epochs=choice.epochs,
        warmup_epochs=choice.warmup_epochs,
    )
    (res,) = run_population(
        spec.model, dataset, [config], device=device, on_progress=on_progress, keep_params=True
    )
    t, y = order_series(res.records, order_kind(spec))
    predicted = trajectory(choice, y0, t)
    last_eval = next((r for r in reversed(res.records) if r.val_accuracy is not None), None)
    test_loss, test_accuracy = None, None
    if res.params is not None and res.outcome in ("completed", "stopped"):
        test_loss, test_accuracy = evaluate_test(spec, dataset, res, device)
    return Verification(
        outcome=res.outcome,
        reason=res.reason,
        seconds=res.seconds,
        final_val_accuracy=last_eval.val_accuracy if last_eval else None,
        final_val_loss=last_eval.val_loss if last_eval else None,
        trajectory=VerificationTrajectory(
            epoch=t.tolist(), measured=y.tolist(), predicted=predicted.tolist()
        ),
        test_loss=test_loss,
        test_accuracy=test_accuracy,
    )


def evaluate_test(
    spec: RecommendationSpec, dataset: Dataset, result: ProbeResult, device: torch.device
) -> tuple[float, float]:
    """(test loss, test accuracy) of a trained member's final parameters."""
    assert result.params is not None
    model = init_model(spec.model, dataset, result.config.seed)
    model.load_state_dict(result.params, strict=False)
    model.to(device).eval()
    data = dataset.to(device)
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data.x_test), TEST_CHUNK):
            logits = model(data.x_test[i : i + TEST_CHUNK])
            y = data.y_test[i : i + TEST_CHUNK]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    n = len(data.x_test)
    return loss_sum / n, correct / n
