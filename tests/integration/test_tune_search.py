"""`tunelab tune` beyond TPE with median pruning, on real tiny studies: the halving family of pruners, the grid and
random samplers, several objectives (a Pareto front), the HTML report's importances and plot, PostgreSQL storage."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from PIL import Image
from tests.integration.tunekit import labels, write_config
from tests.unit.serve.pg import fresh_database, postgres, skip_reason

from tunelab.api import load_config
from tunelab.config import TuneConfig
from tunelab.errors import ConfigError
from tunelab.tune import space, tune

# lr 3e-2 lowers the tiny model's eval loss by step 2 and raises it again by step 4; lr 1e-6 leaves it unchanged
TWO_LRS = {"train.lr": {"type": "categorical", "choices": [3e-2, 1e-6]}}


def study_of(root: Path) -> optuna.Study:
    return optuna.load_study(study_name=root.name, storage=f"sqlite:///{root / 'study.db'}")


def csv_rows(root: Path) -> list[dict[str, str]]:
    with (root / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["halving", "hyperband"])
def test_successive_halving_and_hyperband_prune_trials_at_their_rungs(tmp_path: Path, kind: str):
    path = write_config(tmp_path, sampler="random", trials=5, space=TWO_LRS,
                        pruner={"kind": kind, "reduction_factor": 2})  # fmt: skip
    result = tune(load_config(path), path)
    root = tmp_path / "runs" / "search"
    trials = study_of(root).get_trials()
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and result.counts["pruned"] == len(pruned) and result.counts["complete"] == 5 - len(pruned)
    # the halving family decided, rung by rung (min_resource = train.eval_every = 2, x2 per rung); the median
    # pruner records no rungs
    assert all(any(k.startswith("completed_rung_") for k in t.system_attrs) for t in trials)
    rungs = {2 * 2**k for k in range(3)}
    info, rows = labels(root), {int(r["trial"]): r for r in csv_rows(root)}
    for t in pruned:
        assert t.last_step in rungs and t.last_step < 6
        assert info[t.number]["state"] == "pruned" and f"pruned at step {t.last_step}:" in info[t.number]["why"]
        assert rows[t.number]["state"] == "pruned" and rows[t.number]["pruned_at_step"] == str(t.last_step)
        assert not (root / f"trial-{t.number:04d}" / "final").exists()
        assert (root / f"trial-{t.number:04d}" / "metrics.jsonl").is_file()


GRID = {
    "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "values": [1e-3, 1e-2]},
    "tuning.lora.r": {"type": "int", "low": 2, "high": 8, "step": 6},
}


def test_a_grid_study_runs_every_combination_once_and_stops(tmp_path: Path):
    path = write_config(tmp_path, sampler="grid", trials=None, space=GRID, pruner={"kind": "none"},
                        sections={"train": {"max_steps": 4}})  # fmt: skip
    result = tune(load_config(path), path)
    root = tmp_path / "runs" / "search"
    ran = sorted((i["params"]["train.lr"], i["params"]["tuning.lora.r"]) for i in labels(root).values())
    assert ran == sorted(itertools.product([1e-3, 1e-2], [2, 8]))  # each of the 4 once, then it stopped
    assert result.counts["complete"] == 4
    again = tune(load_config(path), path)  # the grid is done: a second run starts no trial
    assert again.counts == result.counts and len(labels(root)) == 4
    _check_report(root, list(GRID), "eval_loss")


def _check_report(root: Path, keys: list[str], first: str) -> None:
    """importances.json and its table in report.html agree; the plot has a line in the colour of the best and of
    the worst trial (viridis_r: yellow for the lowest loss, purple for the highest) left of its colour bar."""
    imps = json.loads((root / "importances.json").read_text())
    assert set(imps) == set(keys) and sum(imps.values()) == pytest.approx(1.0, abs=1e-6)
    html = (root / "report.html").read_text()
    table = html.split("<h2>Parameter importances</h2>")[1].split("</table>")[0]
    shown = dict(re.findall(r"<tr><td>([^<]+)</td><td>([0-9.]+)</td></tr>", table))
    assert shown == {k: f"{v:.3f}" for k, v in imps.items()}
    png = re.search(r'alt="parallel coordinates" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert png, "no parallel-coordinates plot in report.html"
    img = Image.open(io.BytesIO(base64.b64decode(png.group(1)))).convert("RGB")
    plot = img.crop((0, 0, int(img.width * 0.7), img.height))  # the axes; the colour bar is on the right
    colours = set(plot.getdata())
    for target in ((253, 231, 37), (68, 1, 84)):  # viridis at its ends, drawn at alpha 0.9 on white
        blended = tuple(round(0.9 * c + 0.1 * 255) for c in target)
        assert any(sum(abs(a - b) for a, b in zip(c, blended)) < 30 for c in colours), (target, first)


def test_a_random_study_draws_the_same_parameters_for_the_same_seed(tmp_path: Path):
    space = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
             "tuning.lora.r": {"type": "int", "low": 2, "high": 16}}  # fmt: skip
    drawn = {}
    for name in ("a", "b"):
        path = write_config(tmp_path / name, sampler="random", seed=7, trials=2, space=space,
                            pruner={"kind": "none"}, sections={"train": {"max_steps": 2}})  # fmt: skip
        tune(load_config(path), path)
        drawn[name] = [i["params"] for _, i in sorted(labels(tmp_path / name / "runs" / "search").items())]
    assert len(drawn["a"]) == 2 and drawn["a"][0] != drawn["a"][1] and drawn["a"] == drawn["b"]
    # and they are seed 7's draws (Optuna's random sampler replayed here), not another seed's
    tune_cfg = load_config(path).tune
    assert tune_cfg is not None
    for seed, same in ((7, True), (8, False)):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        replay = [space_sample(study, tune_cfg) for _ in range(2)]
        assert (replay == drawn["a"]) is same


def space_sample(study: optuna.Study, tune_cfg: TuneConfig) -> dict:
    trial = study.ask()
    params = space.sample(trial, tune_cfg.space, {})
    study.tell(trial, 0.0)
    return params


def test_several_objectives_give_a_pareto_front_and_best_yaml_is_its_lowest_loss(tmp_path: Path):
    space = {"train.lr": {"type": "categorical", "choices": [1e-2, 1e-6]},
             "tuning.mode": {"type": "categorical", "choices": ["lora", "full"]}}  # fmt: skip
    objectives = [{"metric": "eval_loss"}, {"metric": "time"}, {"metric": "cost"}]
    path = write_config(tmp_path, sampler="random", trials=4, space=space, objectives=objectives,
                        price_per_hour=3.6)  # fmt: skip
    raw = yaml.safe_load(path.read_text())
    del raw["tune"]["pruner"]  # not configured: several objectives are not pruned
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = tune(load_config(path), path)
    root = tmp_path / "runs" / "search"
    rows = [r for r in csv_rows(root) if r["state"] == "complete"]
    assert len(rows) == 4 and result.counts["pruned"] == 0
    for r in rows:  # cost is the trial's wall time at tune.price_per_hour
        assert float(r["cost"]) == pytest.approx(float(r["time"]) * 3.6 / 3600)
        assert float(r["time"]) == pytest.approx(float(r["seconds"]), abs=0.01)
    points = {r["trial"]: (float(r["eval_loss"]), float(r["time"])) for r in rows}
    front = {n for n, p in points.items() if not any(_dominates(q, p) for q in points.values())}
    assert {r["trial"] for r in rows if r["pareto"] == "yes"} == front
    best = min(front, key=lambda n: points[n][0])
    assert result.best is not None and str(result.best["trial"]) == best
    best_cfg = load_config(root / "best.yaml")
    params = labels(root)[int(best)]["params"]
    assert (best_cfg.train.lr, best_cfg.tuning.mode) == (params["train.lr"], params["tuning.mode"])
    html = (root / "report.html").read_text()
    assert f"Pareto front ({len(front)} of 4 complete trials" in html


def _dominates(q: tuple[float, ...], p: tuple[float, ...]) -> bool:
    return all(a <= b for a, b in zip(q, p)) and q != p


def test_pruning_a_study_of_several_objectives_is_a_clear_error(tmp_path: Path):
    path = write_config(tmp_path, objectives=[{"metric": "eval_loss"}, {"metric": "time"}])  # median pruning
    # what `tunelab tune` prints (exit 2, no traceback) is this ConfigError; nothing has run yet
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:")
    assert "tune.pruner: Optuna prunes single-objective studies only; set pruner: {kind: none}" in str(e.value)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty database on a throwaway PostgreSQL server (tests/unit/serve/pg.py), or a skip saying why not."""
    if reason := skip_reason():
        pytest.skip(reason)
    with postgres() as server:
        yield fresh_database(server)


def test_a_study_in_postgresql_is_stored_there_and_resumes(tmp_path: Path, pg_url: str):
    path = write_config(tmp_path, sampler="random", trials=2, storage=pg_url, space=TWO_LRS,
                        pruner={"kind": "none"}, sections={"train": {"max_steps": 2}})  # fmt: skip
    first = tune(load_config(path), path)
    root = tmp_path / "runs" / "search"
    assert first.counts["complete"] == 2 and not (root / "study.db").exists()
    stored = optuna.load_study(study_name="search", storage=pg_url).get_trials()
    assert [t.user_attrs["run_dir"] for t in stored] == [str(root / f"trial-{n:04d}") for n in (0, 1)]
    more = tune(load_config(path, ["tune.trials=3"]), path)  # the same study, read back from the server
    assert more.counts["complete"] == 3 and sorted(labels(root)) == [0, 1, 2]
