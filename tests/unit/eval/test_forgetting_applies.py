"""The forgetting check means something only for a base that learned general text: a randomly initialised preset,
or a model trained from one (a run, a stage's result), gets "not applicable" instead of a verdict."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig, dump_config
from tunelab.eval.perplexity import forgetting_line, not_applicable_reason
from tunelab.models.loader import random_init_preset
from tunelab.models.presets import build_preset


def _run(folder: Path, base: str) -> Path:
    (folder / "final").mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(RunConfig.model_validate({"model": {"name_or_path": base}})))
    return folder


def test_random_init_is_followed_back_through_runs(tmp_path: Path) -> None:
    first = _run(tmp_path / "first", "tiny-1m")
    second = _run(tmp_path / "second", str(first / "final"))  # e.g. stage 2 trains from stage 1's result
    assert random_init_preset("tiny-1m") == "tiny-1m"
    assert random_init_preset(first) == random_init_preset(first / "final") == "tiny-1m"
    assert random_init_preset(second / "merged") == "tiny-1m"
    pretrained = tmp_path / "pretrained"
    build_preset("tiny", seed=0)[0].save_pretrained(pretrained)  # a model folder: nothing says it is untrained
    third = _run(tmp_path / "third", str(pretrained))
    for name in (str(pretrained), "org/some-model", str(third / "final")):
        assert random_init_preset(name) is None, name
        assert not_applicable_reason(name) is None


def test_the_reason_and_the_line_say_why(tmp_path: Path) -> None:
    first = _run(tmp_path / "first", "tiny")
    assert (
        not_applicable_reason("tiny")
        == "the base model tiny is a randomly initialised preset that never learned general text"
    )
    assert f"{first / 'final'} was trained from tiny, which is a randomly" in not_applicable_reason(
        str(first / "final")
    )
    fg = {"before": 1035.2, "after": 84185.0, "relative_change": 80.3, "threshold": 0.1, "regressed": False,
          "applicable": False, "reason": "the base model tiny-1m is a randomly initialised preset"}  # fmt: skip
    assert forgetting_line(fg) == ("general-text perplexity 1,035 -> 84,185 (+8030.0%, threshold +10%): not applicable "
                                   "(the base model tiny-1m is a randomly initialised preset)")  # fmt: skip
    old = {k: v for k, v in fg.items() if k not in ("applicable", "reason")} | {"regressed": True}  # an older run
    assert forgetting_line(old).endswith("threshold +10%): REGRESSION")
