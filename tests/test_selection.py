"""The rules that choose best/ and end a stage early, on their own (no data, no model)."""

from __future__ import annotations

import pytest

from shiftlab.config.run import EarlyStopConfig, SelectConfig
from shiftlab.train.selection import EarlyStopper, Selector


def test_metric_rule_keeps_the_best_validation_only() -> None:
    sel = Selector(SelectConfig.model_validate("val_miou"), total_epochs=4)
    chosen = [
        sel.update(e, "train", e, m, e == 4)
        for e, m in [
            (1, {"val_miou": 0.2}),
            (2, {}),
            (3, {"val_miou": 0.5}),
            (4, {"val_miou": 0.4}),
        ]
    ]
    assert chosen == [True, False, True, False] and (sel.best_epoch, sel.best_score) == (3, 0.5)
    again = Selector(SelectConfig.model_validate("val_miou"), 4)
    again.load_state_dict(sel.state_dict())
    assert again.update(5, "train", 5, {"val_miou": 0.45}, True) is False  # resumed: still 0.5


def test_last_and_fixed_epoch_rules_read_no_metric() -> None:
    last = Selector(SelectConfig.model_validate("last"), 3)
    assert [last.update(e, "train", e, {"val_miou": 9.0}, e == 3) for e in (1, 2, 3)] == [
        False,
        False,
        True,
    ]
    fixed = Selector(SelectConfig.model_validate({"stage": "stage2", "epoch": 2}), 6)
    picks = [
        fixed.update(d, s, sd, {}, d == 6)
        for d, s, sd in [
            (1, "stage1", 1),
            (2, "stage1", 2),
            (3, "stage1", 3),
            (4, "stage2", 1),
            (5, "stage2", 2),
            (6, "stage2", 3),
        ]
    ]
    assert picks == [False, False, False, False, True, False] and fixed.best_epoch == 5


@pytest.mark.parametrize("min_delta, expect_stop", [(0.0, 7), (0.05, 4)])
def test_early_stopping_counts_validations_without_improvement(
    min_delta: float, expect_stop: int
) -> None:
    stop = EarlyStopper(EarlyStopConfig(patience=2, min_delta=min_delta), "val_miou")
    curve = {1: 0.1, 2: 0.3, 3: 0.33, 4: 0.32, 5: 0.34, 6: 0.33, 7: 0.2}
    stopped_at = next(e for e, v in curve.items() if stop.update(e, "train", {"val_miou": v}))
    assert stopped_at == expect_stop and stop.stopped == {"train": expect_stop}


def test_each_stage_counts_afresh_and_epochs_without_validation_do_not_count() -> None:
    stop = EarlyStopper(EarlyStopConfig(patience=1), "val/noon/miou")
    assert not stop.update(1, "stage1", {"val/noon/miou": 0.5})
    assert not stop.update(2, "stage1", {})  # not validated
    assert stop.update(3, "stage1", {"val/noon/miou": 0.4})
    assert not stop.update(4, "stage2", {"val/noon/miou": 0.3})  # a new stage, a new best
    assert stop.stopped == {"stage1": 3}
    assert not EarlyStopper(None, None).update(1, "train", {"val_miou": 0.0})
