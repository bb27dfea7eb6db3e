"""What the training loop prints: a bar in a terminal, one plain line per log interval anywhere else.

In a log file (stdout not a terminal, see tunelab.console.interactive) each log interval gives one line

    step 20/1002  loss 4.1234  eval loss 4.3210  lr 2.99e-03  12,345 tok/s  ETA 2m03s

with the eval loss when it was measured at that step; an eval at a step that is not a log step gets a line of
its own. The line of a step is printed when the step is done (after its eval), except the last step's, which
waits for the final evaluation after the loop. In a terminal the bar keeps loss and tokens/s in its postfix and
each evaluation prints a line above it. Only the main process prints.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from tunelab.console import duration, interactive


class TrainProgress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, bars: bool | None = None,
                 final_eval: bool = False) -> None:  # fmt: skip
        """`final_eval`: an evaluation follows the last step, so its line waits for the eval loss."""
        self.total, self.initial, self.enabled, self.final_eval = total, initial, enabled, final_eval
        self.bars = interactive() if bars is None else bars
        self.start = time.perf_counter()
        self.pending: dict[str, Any] = {}
        self.bar = None
        if enabled and self.bars:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        elif enabled:
            print(f"training: {total} optimizer steps" + (f", resuming at step {initial}" if initial else ""),
                  flush=True)  # fmt: skip

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kwargs)

    def record(self, rec: dict[str, Any]) -> None:
        """A metrics record of the loop (train or eval), as written to metrics.jsonl."""
        if not self.enabled:
            return
        if self.bar is not None:
            if "eval_loss" in rec:
                self.bar.write(line(rec, self.total))
            return
        if self.pending and self.pending["step"] != rec["step"]:
            self.flush()
        self.pending |= rec
        self.pending["ETA"] = self._eta(rec["step"])

    def step_end(self, step: int) -> None:
        """After a step and its eval: print its line (the last step's waits for the final eval)."""
        if not (step == self.total and self.final_eval):
            self.flush()

    def write(self, text: str) -> None:
        """A message between progress lines (above the bar in a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.flush()
            print(text, flush=True)

    def flush(self) -> None:
        if self.pending:
            print(line(self.pending, self.total), flush=True)
            self.pending = {}

    def close(self) -> None:
        if self.enabled:
            self.flush()
        if self.bar is not None:
            self.bar.close()

    def _eta(self, step: int) -> float | None:
        done = step - self.initial
        return (time.perf_counter() - self.start) / done * (self.total - step) if done > 0 else None


def line(rec: dict[str, Any], total: int) -> str:
    """One progress line from a (merged) metrics record; fields the record lacks are left out."""
    parts = [f"step {rec['step']}/{total}"]
    if _num(rec.get("loss")):
        parts.append(f"loss {rec['loss']:.4f}")
    if _num(rec.get("eval_loss")):
        parts.append(f"eval loss {rec['eval_loss']:.4f}")
        if _num(rec.get("eval_ppl")):
            parts.append(f"eval ppl {rec['eval_ppl']:.4g}")
    if _num(rec.get("lr")):
        parts.append(f"lr {rec['lr']:.2e}")
    if _num(rec.get("tokens_per_s")):
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec.get("ETA") is not None and rec["step"] < total:
        parts.append(f"ETA {duration(rec['ETA'])}")
    return "  ".join(parts)


def _num(x: Any) -> bool:
    """A number to show; NaN and inf are shown as such (a person must see them)."""
    return isinstance(x, int | float) and not isinstance(x, bool)
