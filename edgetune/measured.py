"""A real training run's measured order parameter, as `edgetune.monitor` reports it to the service
(POST /v1/jobs/{id}/trajectory) and the service shows it beside the predicted one (GET of the same
path, and the job's `trajectory` plot). Torch-free, like the client and the schemas.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from edgetune.schemas import MAX_DEPTH, OrderKind, Strict

# The most points one POST carries (a monitor sends a few dozen at a time) and the most one run
# of a job keeps (a 100-epoch run measured 34 times an epoch is 3,400): storage stays bounded.
MAX_POINTS_PER_REPORT = 10_000
MAX_POINTS_PER_RUN = 100_000
RUN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
RunName = Annotated[str, Field(min_length=1, max_length=64, pattern=RUN_NAME)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class TrajectoryPoint(Strict):
    """One measurement of the user's run: after `step` optimizer steps (`epoch` of its own
    training set, when the monitor knows the steps per epoch)."""

    step: int = Field(strict=True, ge=0, le=2**31 - 1)
    epoch: Finite | None = Field(None, ge=0)
    # The network summary: J² of the hidden layer growing fastest (max over layers), as the
    # engine's order parameter "J2" (worker/law.py order_series).
    value: Finite = Field(ge=0)
    J: list[Annotated[Finite, Field(ge=0)]] = Field(max_length=4 * MAX_DEPTH)  # per hidden layer


class TrajectoryReport(Strict):
    """POST /v1/jobs/{id}/trajectory: points of one run. A point is keyed by (run, step): sending
    it again replaces it, so a retried request stores each point once."""

    run: RunName = "default"
    kind: OrderKind = "J2"
    points: list[TrajectoryPoint] = Field(min_length=1, max_length=MAX_POINTS_PER_REPORT)


class MeasuredRun(BaseModel):
    run: str
    kind: OrderKind
    points: list[TrajectoryPoint]  # by step


class MeasuredTrajectories(BaseModel):
    """Every run reported for a job, by run name, each run's points by step."""

    job_id: str
    runs: list[MeasuredRun]


__all__ = [
    "MAX_POINTS_PER_REPORT",
    "MAX_POINTS_PER_RUN",
    "MeasuredRun",
    "MeasuredTrajectories",
    "TrajectoryPoint",
    "TrajectoryReport",
]
