"""The search space, the tune config's checks and the verdict lines (no training here)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tunelab.config import RunConfig, TuneConfig, load_config
from tunelab.errors import ConfigError
from tunelab.tune import space
from tunelab.tune.study import recover
from tunelab.tune.verdict import verdict_lines

SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "tuning.mode": {"type": "categorical", "choices": ["lora", "full"]},
    "tuning.lora.r": {"type": "int", "low": 4, "high": 16, "step": 4, "when": {"tuning.mode": "lora"}},
}


def cfg_with(tune: dict, **sections: dict) -> RunConfig:
    base = {"data": {"train": [{"path": "x.jsonl"}], "eval_ratio": 0.1}, "train": {"eval_every": 2}}
    return RunConfig.model_validate(base | sections | {"tune": tune})


def test_conditional_keys_are_sampled_only_when_their_condition_holds():
    cfg = cfg_with({"space": SPACE})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = study.ask()
        params = space.sample(trial, cfg.tune.space, space.base_raw(cfg))
        seen.append(params)
        assert ("tuning.lora.r" in params) == (params["tuning.mode"] == "lora")
        assert 1e-4 <= params["train.lr"] <= 1e-2
        if "tuning.lora.r" in params:
            assert params["tuning.lora.r"] in (4, 8, 12, 16)
        raw = space.apply(space.base_raw(cfg), params)
        assert RunConfig.model_validate(raw).train.lr == params["train.lr"]
        study.tell(trial, 1.0)
    assert {p["tuning.mode"] for p in seen} == {"lora", "full"}


def test_grid_enumerates_ints_categoricals_and_float_values():
    tune = TuneConfig.model_validate({"sampler": "grid", "space": {
        "tuning.lora.r": {"type": "int", "low": 4, "high": 12, "step": 4},
        "tuning.mode": {"type": "categorical", "choices": ["lora", "dora"]},
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "values": [1e-4, 1e-3]}}})  # fmt: skip
    assert space.grid(tune.space) == {"tuning.lora.r": [4, 8, 12], "tuning.mode": ["lora", "dora"],
                                      "train.lr": [1e-4, 1e-3]}  # fmt: skip
    assert space.grid_size(tune.space) == 12


@pytest.mark.parametrize(
    ("tune", "sections", "message"),
    [
        (
            {"space": {"train.lrr": {"type": "float", "low": 0.1, "high": 1}}},
            {},
            "no 'lrr' in train.*did you mean 'lr'",
        ),
        ({"space": {"tuning.lora.r": {"type": "int", "low": 4, "high": 2}}}, {}, "low < high"),
        ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, {}, "low > 0"),
        ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "sampler": "grid"}, {}, "values"),
        ({"space": SPACE, "objectives": [{"metric": "cost"}]}, {}, "price_per_hour"),
        (
            {"space": SPACE, "objectives": [{"metric": "eval_loss"}, {"metric": "time"}], "pruner": {"kind": "median"}},
            {},
            "single-objective",
        ),
        (
            {"space": {k: v for k, v in SPACE.items() if k != "train.lr"}, "sampler": "grid"},
            {},
            "tuning.lora.r: the grid sampler cannot skip a conditional key",
        ),
        ({"space": SPACE}, {"train": {}}, "train.eval_every"),
        (
            {
                "space": {
                    "tuning.lora.r": {"type": "int", "low": 2, "high": 8, "when": {"tuning.mode": "lora"}},
                    "tuning.mode": {"type": "categorical", "choices": ["lora"]},
                }
            },
            {},
            "must come before",
        ),
    ],
)
def test_bad_tune_sections_say_what_is_wrong(tune: dict, sections: dict, message: str):
    with pytest.raises(ValueError, match=message):
        cfg_with(tune, **sections)


def test_a_typo_in_a_space_key_names_the_file(tmp_path: Path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": [{"path": "x.jsonl"}], "eval_ratio": 0.1},
                                    "tune": {"pruner": {"kind": "none"},
                                             "space": {"tuning.lora.rank": {"type": "int", "low": 1, "high": 4}}}}))  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"t.yaml:\d+: tune: .*tuning.lora.rank is not a config key: no 'rank' in tuning.lora; expected one of: r,",
    ):
        load_config(path)


def test_several_objectives_are_not_pruned_unless_a_pruner_is_asked_for():
    one = TuneConfig.model_validate({"space": SPACE})
    two = TuneConfig.model_validate({"space": SPACE, "objectives": [{"metric": "eval_loss"}, {"metric": "time"}]})
    assert one.pruner.kind == "median" and two.pruner.kind == "none"


def test_directions_follow_the_metric():
    tune = TuneConfig.model_validate({"space": SPACE, "pruner": {"kind": "none"}, "objectives": [
        {"metric": "eval_loss"}, {"metric": "json.json_valid"}, {"metric": "time"}]})  # fmt: skip
    assert [o.resolved_direction() for o in tune.objectives] == ["minimize", "maximize", "minimize"]
    assert tune.prune_metric() == "eval_loss"


def test_recover_fails_a_dead_process_trial_and_runs_its_parameters_again(tmp_path: Path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    trial.set_user_attr("host", __import__("socket").gethostname())
    trial.set_user_attr("pid", 2**22 + 12345)  # above any pid_max: no such process
    done = recover(study, log=lambda *_: None)
    assert done == [trial.number]
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "WAITING"]
    assert study.get_trials()[1].params == {} and study.get_trials()[1].user_attrs["retry_of"] == trial.number
    assert recover(study, log=lambda *_: None) == []  # once only


def test_verdict_marks_the_objective_row_and_says_whether_the_gain_is_real():
    row = {"metric": "loss", "key": "loss", "label": "loss", "value_a": 3.0, "value_b": 2.5, "diff": -0.5,
           "ci_low": -0.6, "ci_high": -0.4, "verdict": "better"}  # fmt: skip
    lines = verdict_lines({"name_a": "default", "name_b": "trial-0003", "rows": [row]}, ["eval_loss"])
    assert "<- objective" in lines[1] and lines[-1] == "verdict on loss: the gain is real (the CI excludes 0)"
    flat = verdict_lines({"rows": [row | {"verdict": "no significant difference"}]}, ["eval_loss"])
    assert "may be luck" in flat[-1]
