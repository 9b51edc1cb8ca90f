"""The line tuning prints per finished trial: the score the trial is ranked by."""

from __future__ import annotations

from types import SimpleNamespace

from poster_ray.config import TuneSettings
from poster_ray.tune.callbacks import TrialLines


def finish(
    lines: TrialLines, trial_id: str, scores: list[float], objective: str, first_epoch: int = 1
) -> None:
    """Report one epoch per score, then complete the trial, as Tune calls a callback."""
    trial = SimpleNamespace(trial_id=trial_id, last_result=None)
    for epoch, score in enumerate(scores, start=first_epoch):
        trial.last_result = {objective: score, "epoch": epoch}
        lines.on_trial_result(0, [], trial, trial.last_result)
    lines.on_trial_complete(0, [], trial)


def test_a_trial_line_gives_its_best_epoch_not_its_last(capsys):
    lines = TrialLines(TuneSettings(trials=2, objective="val_pr_auc"))
    finish(lines, "a", [0.49, 0.52, 0.52, 0.48], "val_pr_auc")
    assert (
        capsys.readouterr().out
        == "trial 1/2 (a): val_pr_auc 0.5200 at epoch 2, 4 epoch(s) trained\n"
    )


def test_a_loss_objective_is_best_at_its_lowest(capsys):
    lines = TrialLines(TuneSettings(trials=1, objective="val_loss"))
    finish(lines, "b", [0.30, 0.22, 0.25], "val_loss")
    assert "val_loss 0.2200 at epoch 2, 3 epoch(s) trained" in capsys.readouterr().out


def test_a_resumed_experiment_goes_on_counting_and_keeps_earlier_epochs(capsys):
    """Tune saves a callback's state with the experiment and hands it to the restored one."""
    first = TrialLines(TuneSettings(trials=3))
    finish(first, "a", [0.4], "val_pr_auc")
    trial = SimpleNamespace(trial_id="b", last_result={"val_pr_auc": 0.5, "epoch": 1})
    first.on_trial_result(0, [], trial, trial.last_result)
    resumed = TrialLines(TuneSettings(trials=3))
    resumed.set_state(first.get_state())
    finish(resumed, "b", [0.45], "val_pr_auc", first_epoch=2)  # after the restore
    assert capsys.readouterr().out.splitlines()[-1] == (
        "trial 2/3 (b): val_pr_auc 0.5000 at epoch 1, 2 epoch(s) trained"
    )
