"""nlnoise.q_schedule: the decay rules for learned Q as pure functions of the logged history."""

import ml_collections
import pytest

from nlnoise import q_schedule


def test_lower_on_rise_rule():
    rule = lambda losses, s=1.0: q_schedule.next_decay_scale(losses, s, factor=0.1,
                                                             tolerance=0.0)
    assert rule([2.0]) == 1.0  # nothing to compare with yet
    assert rule([2.0, 1.9, 1.8]) == 1.0  # still falling
    assert rule([2.0, 1.8, 1.85]) == pytest.approx(0.1)  # rose above its best: lower decay
    assert rule([2.0, 1.8, 1.85], 0.1) == pytest.approx(0.01)
    assert q_schedule.next_decay_scale([1.8, 1.81], 1.0, factor=0.1, tolerance=0.01) == 1.0


def test_trace_plateau_rule():
    plateaued = q_schedule.trace_plateaued
    assert not plateaued([8.0, 6.5], [4.0, 5.0], 0.01)  # one window: nothing to compare with
    assert not plateaued([10.0, 8.0, 6.5], [3.0, 4.0, 5.0], 0.01)  # still falling fast
    # Fast, slowing, then 0.7% per epoch: settled.
    assert plateaued([8.0, 6.5, 4.05, 4.02], [4.0, 5.0, 6.0, 7.0], 0.01)
    assert not plateaued([8.0, 6.5, 4.05, 4.02], [4.0, 5.0, 6.0, 6.5], 0.01)  # in half an epoch
    assert not plateaued([8.0, 6.5, 4.0, 4.5], [4.0, 5.0, 6.0, 7.0], 0.01)  # rising again
    # A Q that barely moved, or moves slowly and steadily, has not settled: its rate is not far
    # below its fastest.
    assert not plateaued([10.0, 9.99, 9.98], [10.0, 11.0, 12.0], 0.01)
    assert not plateaued([9.0, 8.95, 8.9, 8.85], [4.0, 5.0, 6.0, 7.0], 0.01)
    assert not plateaued([8.0, 6.5, 4.0, 4.0], [4.0, 5.0, 6.0, 7.0], 0.0)  # tolerance 0: never


def _records(losses, traces, epochs=None):
    epochs = epochs or [float(e) for e in range(1, len(losses) + 1)]
    return [{"step": 10 * e, "epoch": e, "train_loss": loss, "q_trace": t}
            for loss, t, e in zip(losses, traces, epochs, strict=True)]


# tr(Q) settles at the newest evaluation; the loss keeps falling.
SETTLED = _records([2.0, 1.9, 1.8, 1.7], [8.0, 6.5, 4.05, 4.02])
# The loss rises at the newest evaluation; tr(Q) still falls fast.
ROSE = _records([2.0, 1.8, 1.85], [10.0, 8.0, 6.5])


def test_constant_rule_never_changes_the_scale():
    rule = q_schedule.DecayRule("constant")
    assert q_schedule.scale_after_evaluation(SETTLED, 1.0, rule) == 1.0
    assert q_schedule.scale_after_evaluation(ROSE, 0.5, rule) == 0.5


def test_lower_on_rise_ignores_a_settled_trace():
    rule = q_schedule.DecayRule("lower_on_rise", factor=0.1, tolerance=0.0)
    assert q_schedule.scale_after_evaluation(ROSE, 1.0, rule) == pytest.approx(0.1)
    assert q_schedule.scale_after_evaluation(ROSE, 0.1, rule) == pytest.approx(0.01)
    assert q_schedule.scale_after_evaluation(SETTLED, 1.0, rule) == 1.0


def test_lower_on_plateau_cuts_once_for_the_trace_and_always_for_a_rise():
    rule = q_schedule.DecayRule("lower_on_plateau", factor=0.5, tolerance=0.0,
                                plateau_tolerance=0.01)
    assert q_schedule.scale_after_evaluation(SETTLED, 1.0, rule) == 0.5
    # Already lowered once: a settled trace alone does not lower it again.
    assert q_schedule.scale_after_evaluation(SETTLED, 0.5, rule) == 0.5
    # A rise still does, and counts as the cut (not one for the rise and one for the trace).
    assert q_schedule.scale_after_evaluation(ROSE, 1.0, rule) == 0.5
    assert q_schedule.scale_after_evaluation(ROSE, 0.5, rule) == 0.25
    assert q_schedule.scale_after_evaluation(SETTLED[:1], 1.0, rule) == 1.0  # no history yet


def test_records_after_freeze_keep_windows_that_start_after_it():
    records = [{"step": s} for s in (10, 20, 30, 40)]
    kept = q_schedule.records_after_freeze(records, freeze_steps=15, window_steps=10)
    assert [r["step"] for r in kept] == [30, 40]  # step 20's window [10, 20) overlaps it
    assert q_schedule.records_after_freeze(records, freeze_steps=0, window_steps=10) == records


def test_rule_from_a_config_section_and_unknown_rules():
    q = ml_collections.ConfigDict({"decay_rule": "lower_on_rise", "decay_factor": 0.3,
                                   "decay_tolerance": 0.02, "plateau_tolerance": 0.05})
    assert q_schedule.DecayRule.from_config(q) == q_schedule.DecayRule(
        "lower_on_rise", factor=0.3, tolerance=0.02, plateau_tolerance=0.05)
    with pytest.raises(ValueError, match="q.decay_rule"):
        q_schedule.scale_after_evaluation(ROSE, 1.0, q_schedule.DecayRule("sometimes"))
