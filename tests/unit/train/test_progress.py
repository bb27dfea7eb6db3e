"""What training prints: one plain line per log interval in a log file, eval lines above the bar in a terminal."""

from __future__ import annotations

import re

import pytest

from tunelab.console import Lines, duration, interactive
from tunelab.train.progress import TrainProgress, line

LINE = re.compile(r"^step (\d+)/(\d+)(?:  loss (\S+))?(?:  eval loss (\S+))?")


def _train(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "lr": 1e-3, "tokens_per_s": 1234.5}


def _eval(step: int, loss: float) -> dict:
    return {"step": step, "eval_loss": loss, "eval_ppl": 2.0, "best_eval_loss": loss}


def test_lines_are_parseable_and_the_last_waits_for_the_final_eval(capsys: pytest.CaptureFixture[str]) -> None:
    p = TrainProgress(total=6, bars=False, final_eval=True)
    for step in range(1, 7):
        if step % 2 == 0:
            p.record(_train(step, 1.0 / step))
        if step == 4:
            p.record(_eval(step, 0.3))
        p.step_end(step)
    before = capsys.readouterr().out
    assert "step 4/6" in before and "step 6/6" not in before  # the last line waits for the final eval
    p.record(_eval(6, 0.2))
    p.close()
    out = before + capsys.readouterr().out
    assert "\r" not in out
    assert out.startswith("training: 6 optimizer steps\n")
    rows = [LINE.match(x) for x in out.splitlines()[1:]]
    assert all(rows), out
    got = [(int(m[1]), m[3], m[4]) for m in rows if m]
    assert got == [(2, "0.5000", None), (4, "0.2500", "0.3000"), (6, "0.1667", "0.2000")]
    assert "lr 1.00e-03  1,234 tok/s" in out and "ETA" in out.splitlines()[1]


def test_header_eval_off_a_log_step_and_nothing_on_other_processes(capsys: pytest.CaptureFixture[str]) -> None:
    p = TrainProgress(total=4, initial=1, bars=False)
    assert capsys.readouterr().out == "training: 4 optimizer steps, resuming at step 1\n"
    p.record(_eval(3, 0.5))
    p.step_end(3)
    p.write("early stopping at step 3")
    p.close()
    assert capsys.readouterr().out.splitlines() == ["step 3/4  eval loss 0.5000  eval ppl 2  ETA 0s",
                                                    "early stopping at step 3"]  # fmt: skip
    quiet = TrainProgress(total=4, enabled=False, bars=False)
    quiet.record(_train(2, 1.0))
    quiet.step_end(2)
    quiet.close()
    assert capsys.readouterr().out == ""


def test_terminal_keeps_the_bar_and_prints_eval_loss_above_it(capsys: pytest.CaptureFixture[str]) -> None:
    p = TrainProgress(total=4, bars=True)
    p.update()
    p.record(_train(1, 2.0))  # in the bar's postfix, not a line
    p.record(_eval(1, 1.5))
    p.step_end(1)
    p.close()
    out = capsys.readouterr().out
    assert out.splitlines() == ["step 1/4  eval loss 1.5000  eval ppl 2"]


def test_a_nan_loss_is_shown() -> None:
    assert "loss nan" in line({"step": 3, "loss": float("nan")}, 10)


def test_long_phases_print_plain_lines_and_quick_ones_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(Lines(range(5), desc="loss", unit="batch")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().out == ""  # done before the first line was due
    bar = Lines(total=4, desc="generate", unit="prompt", every=0.0)
    bar.update(2)
    bar.close()
    out = capsys.readouterr().out
    assert "\r" not in out
    assert out.splitlines()[0].startswith("generate: 2/4 prompts (50%), 0s, ETA")
    assert out.splitlines()[1].startswith("generate: 2 prompts in ")


def test_progress_mode_and_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_PROGRESS", "bars")
    assert interactive()
    monkeypatch.setenv("TUNELAB_PROGRESS", "lines")
    assert not interactive()
    monkeypatch.delenv("TUNELAB_PROGRESS")
    assert not interactive()  # pytest captures stdout: not a terminal
    assert [duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]
