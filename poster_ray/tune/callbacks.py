"""Tune callbacks: one line per finished trial, and the CPUs of ended trials set free."""

from __future__ import annotations

from typing import ClassVar

import ray
from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, placement_group_table

from poster_ray.config import TuneSettings, pick_best
from poster_ray.train import PLACEMENT_GROUP_KEY


class ReleaseTrainWorkers(Callback):
    """Free the CPUs of a trial's Train workers when the trial ends.

    Tune kills a trial that ASHA stops; its Train controller dies with it, but the
    workers' placement group lives as long as the Ray job (ray#54305; Ray's own cleaner
    needs the dashboard's state API), and on 2 CPUs the next trial then waits forever.
    The workers report their group's id (train_worker.placement_group_of_this_worker),
    and this removes it.
    """

    # Class-wide, not per instance: Tuner.restore runs a pickled copy of this callback,
    # and the driver must still free what that copy saw when the experiment stops.
    seen: ClassVar[set[str]] = set()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if PLACEMENT_GROUP_KEY in result:
            self.seen.add(result[PLACEMENT_GROUP_KEY])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        remove_placement_group_by_id((trial.last_result or {}).get(PLACEMENT_GROUP_KEY))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        remove_placement_group_by_id((trial.last_result or {}).get(PLACEMENT_GROUP_KEY))

    @classmethod
    def release_all(cls) -> None:
        """After the experiment, interrupted or not: trials cut off mid-run never complete."""
        for group_id in cls.seen:
            remove_placement_group_by_id(group_id)
        cls.seen.clear()


def remove_placement_group_by_id(group_id: str | None) -> None:
    """Remove the placement group a worker reported by id, unless it is gone already.

    The one place that rebuilds a group from its id (ray#54305: a stopped trial's Train
    workers keep their group). `PlacementGroup` and `PlacementGroupID` are public
    classes; `placement_group_table` is a DeveloperAPI, the only way to read a group's
    state. A group object cannot travel in a trial's reported metrics (they are logged as
    JSON), hence the id.
    """
    if not group_id:
        return
    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
    if placement_group_table(group).get("state") not in (None, "REMOVED"):
        ray.util.remove_placement_group(group)


class TrialLines(Callback):
    """One line per finished trial: its best epoch's objective, the score tuning ranks it
    by (its last epoch's can be far below, after over-fitting), and how far it got. Its
    state is saved with the experiment, so a resumed one goes on counting."""

    def __init__(self, settings: TuneSettings) -> None:
        self.objective, self.trials, self.done = settings.objective, settings.trials, 0
        self.pick = pick_best(settings.objective)
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (objective, epoch)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if self.objective not in result:
            return
        scored = (result[self.objective], result.get("epoch", 0))
        earlier = self.best.get(trial.trial_id, scored)
        self.best[trial.trial_id] = self.pick(earlier, scored, key=lambda pair: pair[0])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        last_epoch = (trial.last_result or {}).get("epoch", 0)
        best = self.best.get(trial.trial_id)
        score = f"{best[0]:.4f} at epoch {best[1]}" if best else "not reported"
        print(
            f"trial {self.done}/{self.trials} ({trial.trial_id}): {self.objective} {score}, "
            f"{last_epoch} epoch(s) trained",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        print(f"trial {self.done}/{self.trials} ({trial.trial_id}) failed", flush=True)

    def get_state(self) -> dict:
        return {"done": self.done, "best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.done, self.best = state["done"], dict(state["best"])
