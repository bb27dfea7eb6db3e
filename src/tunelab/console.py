"""What tunelab prints while it works: bars in a terminal, plain lines in a log file, the libraries kept quiet.

A progress bar redraws itself with carriage returns, which a log file or a CI page keeps as one long unreadable
line. So bars are drawn only when both stdout and stderr are terminals (`TUNELAB_PROGRESS=bars` or `lines`
decides instead); elsewhere a long phase prints a plain line at most every `LINE_EVERY_S` seconds, and a phase
that ends sooner prints nothing. The training loop prints its own lines (tunelab.train.progress).

`quiet_libraries` turns off the libraries' own progress bars and the warnings known to be harmless here; the
`tunelab` command calls it first thing, Python API users may call it too. tqdm (and the asyncio it imports) is
imported where a bar is drawn, so that every `tunelab` command does not pay for it at start.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

LINE_EVERY_S = 30.0


def interactive() -> bool:
    """Whether progress bars are wanted: TUNELAB_PROGRESS=bars|lines, else both stdout and stderr are terminals."""
    mode = os.environ.get("TUNELAB_PROGRESS", "").strip().lower()
    if mode in ("bars", "lines"):
        return mode == "bars"
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m: short enough for a progress line."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Lines:
    """A stand-in for a tqdm bar where no terminal is: a plain line on stdout at most every `every` seconds
    ("generate: 100/200 prompts (50%), 32s, ETA 32s") and a closing line when any was printed."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, every: float = LINE_EVERY_S) -> None:  # fmt: skip
        self.iterable, self.desc, self.unit, self.disable, self.every = iterable, desc, unit, disable, every
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.printed = total, 0, False
        self.start = self.last = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.disable and now - self.last >= self.every:
            self.last, self.printed = now, True
            print(self._line(now, done=False), flush=True)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Bars show a postfix; a line-based log gets the numbers from the caller's own lines."""

    def close(self) -> None:
        if self.printed and not self.disable:
            print(self._line(time.perf_counter(), done=True), flush=True)
            self.printed = False

    def _line(self, now: float, done: bool) -> str:
        elapsed = now - self.start
        head = f"{self.desc}: " if self.desc else ""
        if done:
            return f"{head}{self.n} {self.unit}s in {duration(elapsed)}"
        if not self.total:
            return f"{head}{self.n} {self.unit}s, {duration(elapsed)}"
        eta = elapsed / max(self.n, 1) * (self.total - self.n)
        return f"{head}{self.n}/{self.total} {self.unit}s ({self.n / self.total:.0%}), {duration(elapsed)}, ETA {duration(eta)}"


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False) -> Any:  # fmt: skip
    """A tqdm bar in a terminal, else `Lines`; both take update/close/set_postfix and iterate over `iterable`."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
    return Lines(iterable, total, desc, unit, disable)


# Each filter names one warning that tells a tunelab user nothing they can act on. Real problems stay visible.
HARMLESS_WARNINGS: list[tuple[str, type[Warning]]] = [
    # peft (0.21) reads `model.is_gradient_checkpointing`, which transformers 5 deprecated in favour of
    # `is_activation_checkpointing`: printed on every LoRA run, fixed by a peft release, nothing to change here.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
]


def quiet_libraries() -> None:
    """Turn off the progress bars of transformers, datasets and huggingface_hub, and the harmless warnings above.

    The bars ("Writing model shards", "Loading checkpoint shards", "Generating train split", "Fetching files")
    repeat what tunelab says it is doing and fill log files with carriage returns. A library imported later reads
    the environment variables; one imported already is told directly. A user's own setting (=0) is kept."""
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    if os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1" and "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
