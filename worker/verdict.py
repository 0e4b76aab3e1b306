"""The one line a person acts on: use the numbers, use them with care, or don't (and what to try).

The validity flags are the engine's evidence; this turns them into the single reason that matters
most, phrased for an ML engineer rather than a physicist. The flags and warnings stay in the
result for whoever wants the detail.
"""

from __future__ import annotations

from app.schemas import Recommendation, Verdict

# Most serious first: the verdict names the first flag raised (exponents_off only informs, so it
# comes last but one: it names the reason only when nothing weightier is raised).
CARE: tuple[tuple[str, str], ...] = (
    (
        "probe_diverged",
        "a short trial run diverged, so the learning rate sits near this model's stability "
        "limit; if training is unstable, halve it",
    ),
    (
        "extrapolated",
        "the learning rate lies outside the range the trial runs measured (an extrapolation)",
    ),
    (
        "no_growth_law",
        "no scaling law held for this model in the trial runs, so these are the settings of the "
        "best trial run, not a prediction; compare them with your usual settings",
    ),
    (
        "no_criterion",
        "no rule for where training should end is validated for this optimizer, so these are "
        "the settings of the best trial run, not a prediction; compare them with your usual "
        "settings",
    ),
    (
        "edge_unreachable",
        "with the settings you fixed, training does not reach its best regime within the epoch "
        "budget; free the learning rate or raise budget.epochs",
    ),
    (
        "not_linear",
        "the trial runs' measurements bent more than the law allows; the numbers are less "
        "certain than usual",
    ),
    ("low_r2", "the trial runs' measurements were noisy; the numbers are less certain than usual"),
    (
        "rate_capped",
        "the epoch budget is short for this model: the learning rate is held at the top of the "
        "range the method covers, so training ends before the edge (as the best short runs do); "
        "a longer budget gives a rate it can place exactly",
    ),
    (
        "exponents_off",
        "this model follows the scaling law only roughly; the learning rate is interpolated "
        "between the trial runs",
    ),
    (
        "outside_validated_regime",
        "the method was validated on MLPs trained on Fashion-MNIST; for this model or data the "
        "numbers are a measured starting point, not a validated optimum",
    ),
)


def verdict(result: Recommendation) -> Verdict:
    """The verdict of a result whose validity is already decided."""
    validity = result.validity
    if result.hyperparameters is None:
        return Verdict(action="dont", message=f"don't: {validity.reason or 'no configuration'}")
    if validity.ok:
        return Verdict(action="use", message="use it")
    reasons = [reason for flag, reason in CARE if validity.flags.get(flag)]
    if reasons:
        return Verdict(action="care", message=f"use with care: {reasons[0]}", reasons=reasons)
    return Verdict(action="care", message="use with care: see the warnings")
