"""What a search writes, on Optuna studies built in memory (no training): importances follow the objective's
direction."""

from __future__ import annotations

import optuna
import pytest

from tunelab.config import TuneConfig
from tunelab.tune.report import importances

SPACE = {
    "train.lr": {"type": "float", "low": 0, "high": 1},
    "train.warmup_ratio": {"type": "float", "low": 0, "high": 1},
}
DIST = {k: optuna.distributions.FloatDistribution(0, 1) for k in SPACE}


def study_of(directions: list[str]) -> optuna.Study:
    """x decides only the top of the first objective (x above 0.8 scores 10x); y alone orders the rest."""
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(200):
        t = study.ask(DIST)
        x, y = t.params["train.lr"], t.params["train.warmup_ratio"]
        first = 10 * x if x > 0.8 else y
        study.tell(t, [first, 1.0][: len(directions)])
    return study


@pytest.mark.parametrize("second", [False, True])
def test_importances_are_for_the_first_objective_in_its_direction(second: bool):
    objectives = [{"metric": "json.json_valid"}] + ([{"metric": "time"}] if second else [])
    tune = TuneConfig.model_validate({"space": SPACE, "objectives": objectives})
    assert tune.objectives[0].resolved_direction() == "maximize"
    up = importances(study_of(["maximize", "minimize"][: len(objectives)]), tune)
    assert up["train.lr"] > up["train.warmup_ratio"]  # the highest scores are the x > 0.8 trials
    down = TuneConfig.model_validate({"space": SPACE, "objectives": [{"metric": "eval_loss"}] + objectives[1:]})
    low = importances(study_of(["minimize", "minimize"][: len(objectives)]), down)
    assert low["train.warmup_ratio"] > low["train.lr"]  # the lowest are the small-y trials


@pytest.mark.parametrize("lrs", [[0.5], [0.5, 0.5]])
def test_too_few_trials_that_differ_give_no_importances_rather_than_equal_shares(lrs: list[float]):
    tune = TuneConfig.model_validate({"space": SPACE})
    study = optuna.create_study()
    for i, lr in enumerate(lrs):
        study.add_trial(optuna.create_trial(params={"train.lr": lr, "train.warmup_ratio": 0.5}, distributions=DIST,
                                            value=float(i)))  # fmt: skip
    assert importances(study, tune) == {}
    study.add_trial(optuna.create_trial(params={"train.lr": 0.0, "train.warmup_ratio": 0.5}, distributions=DIST,
                                        value=5.0))  # fmt: skip
    imps = importances(study, tune)
    assert imps["train.lr"] > imps["train.warmup_ratio"]  # now one parameter varied with the value
