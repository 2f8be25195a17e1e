"""When to lower the weight decay on learned Q: pure rules over the logged evaluation history.

The decay on Q (``q.weight_decay``, multiplied by a scale kept in the optimizer state) diffuses
Q; the paper lowered it by hand when the training cost climbed. ``q.decay_rule`` automates that:

* ``constant``: never changes the scale (the paper's fixed decay);
* ``lower_on_rise``: :func:`next_decay_scale`, after a rise of the noisy training loss;
* ``lower_on_plateau``: the same, and also once when ``tr(Q)`` has settled
  (:func:`trace_plateaued`).

Every rule reads the noisy training loss and Q only, never a clean label. The run loop calls
:func:`scale_after_evaluation` after each evaluation past the freeze and stores the result in
the optimizer state, so a resumed run continues with the same scale.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

DECAY_RULES = ("constant", "lower_on_rise", "lower_on_plateau")

# A plateau is a rate of change this far below the fastest one since the freeze, so that a Q
# that has not yet started to move (or moves slowly and steadily) is not taken as settled.
PLATEAU_PEAK_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class DecayRule:
    """A rule's settings: ``rule`` (one of :data:`DECAY_RULES`), ``factor`` (the multiplier on
    each lowering), ``tolerance`` (relative rise of the loss that counts) and
    ``plateau_tolerance`` (relative change of ``tr(Q)`` per epoch below which it has settled)."""

    rule: str = "lower_on_plateau"
    factor: float = 0.1
    tolerance: float = 0.01
    plateau_tolerance: float = 0.01

    @classmethod
    def from_config(cls, q_cfg: Any) -> DecayRule:
        """From a config's ``q`` section (``decay_rule``, ``decay_factor``, ``decay_tolerance``,
        ``plateau_tolerance``)."""
        return cls(rule=q_cfg.decay_rule, factor=q_cfg.decay_factor,
                   tolerance=q_cfg.decay_tolerance, plateau_tolerance=q_cfg.plateau_tolerance)


def next_decay_scale(losses_since_unfreeze: Sequence[float], scale: float, *, factor: float,
                     tolerance: float) -> float:
    """The ``lower_on_rise`` rule: the decay multiplier after the newest window's train loss.

    Over-diffusing Q (``tr(Q) < tr(Q*)``) makes the combined model fit the noisy labels worse,
    so the noisy training loss climbs; the paper then lowered the decay on Q. Here: if the
    newest loss exceeds the best earlier one (since the freeze ended) by more than
    ``tolerance`` (relative), multiply the decay by ``factor``. Uses noisy labels only.
    """
    if len(losses_since_unfreeze) < 2:
        return scale
    *earlier, newest = losses_since_unfreeze
    return scale * factor if newest > min(earlier) * (1 + tolerance) else scale


def trace_plateaued(traces: Sequence[float], epochs: Sequence[float], tolerance: float) -> bool:
    """Whether ``tr(Q)`` has settled: over the newest evaluation window it moved by less than
    ``tolerance`` of its value per epoch (either way), and by less than a quarter
    (:data:`PLATEAU_PEAK_FRACTION`) of its fastest move per epoch over the earlier windows.

    Under a constant decay ``tr(Q)`` falls from ``K`` until the decay's pull balances the data
    term's; from then on the decay no longer moves Q toward ``Q*`` but only biases it further
    (``nlnoise.optim.decay_fixed_point``), so the ``lower_on_plateau`` rule lowers the decay
    there. Uses Q alone: no labels, clean or noisy.
    """
    if len(traces) < 3 or any(b <= a for a, b in itertools.pairwise(epochs)):
        return False
    rates = [abs(b - a) / max(abs(a), 1e-12) / (eb - ea)
             for (a, b), (ea, eb) in zip(itertools.pairwise(traces), itertools.pairwise(epochs),
                                         strict=True)]
    *earlier, newest = rates
    return newest < tolerance and newest < PLATEAU_PEAK_FRACTION * max(earlier)


def records_after_freeze(records: Sequence[dict[str, Any]], *, freeze_steps: int,
                         window_steps: int) -> list[dict[str, Any]]:
    """The evaluation records whose training window (the ``window_steps`` steps before their
    ``step``) lies wholly after the freeze: the history the rules may compare."""
    return [r for r in records if r["step"] - window_steps >= freeze_steps]


def scale_after_evaluation(records_since_freeze: Sequence[dict[str, Any]], scale: float,
                           rule: DecayRule) -> float:
    """The decay scale after the newest evaluation (the last of ``records_since_freeze``).

    ``records_since_freeze`` are evaluation records (``train_loss``, ``q_trace``, ``epoch``)
    whose windows lie after the freeze, oldest first, ending with the newest. ``lower_on_rise``
    multiplies ``scale`` by ``rule.factor`` when the newest loss rose (:func:`next_decay_scale`);
    ``lower_on_plateau`` also does so when ``tr(Q)`` settled (:func:`trace_plateaued`), but only
    while the scale is still 1: after one cut the decay only has to hold Q, and more cuts would
    leave it to drift back as the network memorises. ``constant`` returns ``scale``.
    """
    if rule.rule not in DECAY_RULES:
        raise ValueError(f"q.decay_rule: must be one of {DECAY_RULES}, got {rule.rule!r}.")
    if rule.rule == "constant":
        return scale
    new = next_decay_scale([r["train_loss"] for r in records_since_freeze], scale,
                           factor=rule.factor, tolerance=rule.tolerance)
    if (new == scale == 1.0 and rule.rule == "lower_on_plateau"
            and trace_plateaued([r["q_trace"] for r in records_since_freeze],
                                [r["epoch"] for r in records_since_freeze],
                                rule.plateau_tolerance)):
        new = scale * rule.factor
    return new
