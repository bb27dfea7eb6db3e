"""The one training loop, on top of accelerate (so `accelerate launch` runs DDP/FSDP/DeepSpeed unchanged).

Per optimizer step: the plan gives this process its micro-batches and the step's global count of loss
units (host-side, no communication); each micro-batch's summed loss is scaled by world / count and
back-propagated (no gradient sync until the last one), so accumulation of k micro-batches on w processes
equals one batch k*w times bigger. No host sync happens inside a step: the loss is accumulated on the
device and read (`.item()`) only every `log_every` steps, and tokens/s are counted on the host.

Evaluation (loss, and perplexity where the loss is token cross-entropy) runs every `eval_every` steps and
at the end; the best eval loss is tracked for early stopping and for the protected "best" checkpoint.
Ctrl-C or SIGTERM (what schedulers and `kill` send) sets a flag that is honoured after the current step: a
checkpoint is saved and `TrainingInterrupted` is raised (a second signal aborts at once; the atomic checkpoint
write keeps the last good one intact). A non-finite loss, seen where the loss is read anyway (log steps,
and the last step is always one), stops the run with an error instead of training on and saving NaN weights;
final/ is also refused when the trained weights are not finite (one check, at the end). `--resume` takes the
newest checkpoint that verifies and loads, and says which newer ones it skipped and why.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.methods import Method, MethodModule
from tunelab.train import checkpoint as ckpt
from tunelab.train import distributed
from tunelab.train.optim import build_optimizer, build_scheduler
from tunelab.train.plan import Plan, eval_batches, packing_note
from tunelab.train.progress import TrainProgress
from tunelab.train.rundir import MetricsLog


@dataclass
class Hooks:
    """Optional callbacks (host side, main process only for on_log)."""

    on_log: Callable[[dict[str, Any]], None] | None = None  # every metrics record (train and eval)
    on_step_end: Callable[[int], None] | None = None  # after each optimizer step, with the step number
    on_checkpoint: Callable[[Path], None] | None = None


class TrainingInterrupted(Exception):
    def __init__(self, run_dir: Path, step: int, checkpoint: Path, signum: int = signal.SIGINT) -> None:
        self.run_dir, self.step, self.checkpoint, self.signum = run_dir, step, checkpoint, signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name}) at step {step}; checkpoint saved to {checkpoint}")


@dataclass
class LoopState:
    step: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    trained_tokens: int = 0
    stopped_early: bool = False


@dataclass
class Job:
    cfg: RunConfig
    run_dir: Path
    accelerator: Any
    model: torch.nn.Module  # HF or peft model with trainable parameters marked
    tokenizer: Any
    method: Method
    train_items: Sequence[Any]  # a prepared kind's items (Examples read from a memory-mapped store, ...)
    eval_items: Sequence[Any]
    eval_tasks: list[str] = field(default_factory=list)  # task of each eval item (multi-task runs)


class Trainer:
    def __init__(self, job: Job, hooks: Hooks | None = None) -> None:
        self.job, self.hooks, self.acc = job, hooks or Hooks(), job.accelerator
        t, m = job.cfg.train, job.method
        if not job.train_items:
            raise TunelabError("data.train: no training examples after preparation")
        self.plan = Plan(
            lengths=[m.length(x) for x in job.train_items],
            counts=[m.count(x) for x in job.train_items],
            batch_size=t.batch_size,
            grad_accum=t.grad_accum,
            world=self.acc.num_processes,
            seed=t.seed,
            group_by_length=t.group_by_length and not job.cfg.data.packing,
        )
        self.total = self.plan.total_steps(t.epochs, t.max_steps)
        if job.cfg.data.packing and hasattr(job.train_items[0], "n_examples"):
            rows = [x.n_examples for x in job.train_items]
            self.acc.print(packing_note(rows, t.batch_size, t.grad_accum * self.acc.num_processes))
        module = MethodModule(job.model, m)
        optimizer = build_optimizer(module, t)
        self.scheduler = build_scheduler(optimizer, t, self.total)
        self.module, self.optimizer = self.acc.prepare(module, optimizer)
        self.acc.register_for_checkpointing(self.scheduler)  # stepped by us: once per optimizer step
        ckpt.register_trainable_only(self.acc)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.pad_id = job.tokenizer.pad_token_id
        self.root = job.run_dir / "checkpoints"
        self.state = LoopState()
        self.resumed = False
        self._interrupt = False
        self._signal = int(signal.SIGINT)
        self._last_eval = self._last_save = -1
        self.progress: TrainProgress | None = None  # while run() runs: prints each record (main process)

    # ------------------------------------------------------------------ state
    def resume(self) -> Path:
        skipped = []
        for last in ckpt.newest_first(self.root):
            problem = ckpt.verify(last) or self._load(last)
            if problem is None:
                break
            skipped.append(f"{last.name}: {problem}")
            self.acc.print(f"--resume: skipping {last} ({problem})")
        else:
            why = "".join(f"\n  {s}" for s in skipped)
            raise TunelabError(f"--resume: no complete checkpoint in {self.root}{why}")
        saved = ckpt.read_state(last)
        self.state = LoopState(**{f.name: saved[f.name] for f in fields(LoopState) if f.name in saved})
        self.resumed = True
        self.acc.print(f"resumed from {last} (step {self.state.step} of {self.total})")
        return last

    def _load(self, path: Path) -> str | None:
        """None when the checkpoint loaded; else why not (a later, older one is tried: each load replaces all
        of model, optimizer, scheduler and RNG state)."""
        try:
            self.acc.load_state(str(path))
        except Exception as e:  # safetensors, torch zip and our own mismatch errors: all mean "not this one"
            return f"cannot be loaded: {type(e).__name__}: {str(e)[:300]}"
        return None

    def save(self) -> Path:
        step = self.state.step
        path = ckpt.save(self.acc, self.root, step, asdict(self.state))
        self._last_save = step
        self._prune()
        if self.hooks.on_checkpoint:
            self.hooks.on_checkpoint(path)
        return path

    def _prune(self) -> None:
        if self.acc.is_main_process:
            protect = {self.state.best_step} if self.state.best_step is not None else set()
            ckpt.prune(self.root, self.job.cfg.train.save_total_limit, protect)

    # ------------------------------------------------------------------ batches
    def _batch(self, items: list[Any]) -> dict[str, torch.Tensor]:
        batch = self.job.method.collate(items, self.pad_id)
        return {k: v.to(self.acc.device, non_blocking=True) for k, v in batch.items()}

    def _sum(self, x: torch.Tensor) -> float:
        return float((self.acc.reduce(x, "sum") if self.acc.num_processes > 1 else x).item())

    # ------------------------------------------------------------------ the loop
    def run(self) -> LoopState:
        acc, t, job = self.acc, self.job.cfg.train, self.job
        main = acc.is_main_process
        log = MetricsLog(job.run_dir / "metrics.jsonl", self.state.step if self.resumed else None) if main else None
        bar = self.progress = TrainProgress(self.total, self.state.step, main, final_eval=bool(job.eval_items))
        loss_acc = torch.zeros((), device=acc.device)
        metric_acc: dict[str, torch.Tensor] = {}  # a method's own metrics (DPO rewards...), summed like the loss
        win_units = win_tokens = 0
        win_start = time.perf_counter()
        grad_norm: torch.Tensor | None = None
        restore = self._install_sigint()
        self.module.train()
        try:
            for step in range(self.state.step, self.total):
                units, tokens = self.plan.step_units(step)
                scale = acc.num_processes / max(units, 1)
                micro = self.plan.micro_batches(step, acc.process_index)
                for i, idx in enumerate(micro):
                    batch = self._batch([job.train_items[j] for j in idx])
                    with acc.no_sync(self.module) if i < len(micro) - 1 else nullcontext():
                        out = self.module(batch)
                        acc.backward(out["loss_sum"] * scale)
                    loss_acc += out["loss_sum"].detach()
                    for k, v in out.items():
                        if k != "loss_sum":
                            metric_acc[k] = metric_acc.get(k, 0) + v.detach()
                grad_norm = acc.clip_grad_norm_(self.params, t.max_grad_norm or float("inf"))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step = done = step + 1
                self.state.trained_tokens += units
                win_units, win_tokens = win_units + units, win_tokens + tokens
                bar.update(1)

                at_log = done % t.log_every == 0 or done == self.total
                if at_log:
                    secs = time.perf_counter() - win_start
                    rec = {
                        "step": done,
                        "epoch": round(self.plan.epoch_of(done), 4),
                        "loss": self._sum(loss_acc) / max(win_units, 1),
                        "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "tokens_per_s": win_tokens / secs,
                        f"trained_{job.method.unit}_per_s": win_units / secs,  # what the loss is averaged over
                        f"trained_{job.method.unit}": self.state.trained_tokens,
                    }
                    # Summed per unit by the method (see methods/base.py), so the window mean is sum / units.
                    rec |= {k: self._sum(v) / max(win_units, 1) for k, v in metric_acc.items()}
                    self._record(log, rec)
                    self._check_finite(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:,.0f}", refresh=False)
                    loss_acc.zero_()
                    metric_acc.clear()
                    win_units = win_tokens = 0
                    win_start = time.perf_counter()
                stop = False
                if job.eval_items and t.eval_every and done % t.eval_every == 0 and done < self.total:
                    stop = self._eval_and_track(log)
                bar.step_end(done)
                if t.save_every and done % t.save_every == 0 and self._last_save != done:
                    self.save()
                if self.hooks.on_step_end:
                    self.hooks.on_step_end(done)
                if self._interrupted(at_log):
                    path = self.root / f"step-{done}" if self._last_save == done else self.save()
                    raise TrainingInterrupted(job.run_dir, done, path, self._signal)
                if stop:
                    self.state.stopped_early = True
                    bar.write(
                        f"early stopping at step {done}: no eval improvement in {t.early_stopping_patience} evals"
                    )
                    break
            if job.eval_items and self._last_eval != self.state.step:
                self._eval_and_track(log)
        finally:
            restore()
            bar.close()
            if log:
                log.close()
        return self.state

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        """Eval loss and the method's own metrics (eval_rewards/accuracies, ...) over the eval items; with
        several tasks also eval_loss/<task>. Each task is batched on its own, so no per-item losses are needed."""
        job = self.job
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(job.eval_tasks or [""] * len(job.eval_items)):
            groups.setdefault(task, []).append(i)
        sums: dict[str, float] = {}
        out: dict[str, float] = {}
        self.module.eval()
        with torch.no_grad():
            for task, idx in groups.items():
                task_sums = self._eval_sums([job.eval_items[i] for i in idx])
                if len(groups) > 1:
                    out[f"eval_loss/{task}"] = task_sums["loss_sum"] / max(task_sums["units"], 1)
                for k, v in task_sums.items():
                    sums[k] = sums.get(k, 0.0) + v
        self.module.train()
        units = max(sums.pop("units"), 1)
        loss = sums.pop("loss_sum") / units
        metrics = {f"eval_{k}": v / units for k, v in sums.items()}  # summed per unit, like the train window
        if self.job.method.perplexity:  # not for DPO margins, KD, GRPO's -reward or a head's label CE
            metrics["eval_ppl"] = math.exp(min(loss, 50.0))
        return {"eval_loss": loss, **metrics, **out}

    def _eval_sums(self, items: list[Any]) -> dict[str, float]:
        """Summed loss and method metrics over `items` (all processes), plus their units."""
        acc, m = self.acc, self.job.method
        totals: dict[str, torch.Tensor] = {}
        for idx, real in eval_batches([m.length(x) for x in items], self.job.cfg.train.batch_size,
                                      acc.num_processes, acc.process_index):  # fmt: skip
            out = self.module(self._batch([items[j] for j in idx]))
            for k, v in out.items():  # a padding repeat counts 0; every process still reduces the same keys
                totals[k] = totals.get(k, 0) + v.detach().float() * float(real)
        sums = {k: self._sum(v) for k, v in totals.items()}
        return {"loss_sum": 0.0, **sums, "units": float(sum(m.count(x) for x in items))}

    def _eval_and_track(self, log: MetricsLog | None) -> bool:
        """Evaluate, record, keep the best; True when early stopping's patience is used up."""
        t, s = self.job.cfg.train, self.state
        metrics = self.evaluate()
        self._last_eval = s.step
        improved = s.best_eval_loss is None or metrics["eval_loss"] < s.best_eval_loss
        if improved:
            s.best_eval_loss, s.best_step, s.bad_evals = metrics["eval_loss"], s.step, 0
        else:
            s.bad_evals += 1
        self._record(log, {"step": s.step, **metrics, "best_eval_loss": s.best_eval_loss})
        if improved and (t.save_every or t.load_best_at_end) and self._last_save != s.step:
            self.save()
        elif improved:
            self._prune()  # the previous best may now be past the retention limit
        return bool(t.early_stopping_patience and s.bad_evals >= t.early_stopping_patience)

    def _record(self, log: MetricsLog | None, rec: dict[str, Any]) -> None:
        if self.progress:
            self.progress.record(rec)
        if log:
            log.write(rec)
            if self.hooks.on_log:
                self.hooks.on_log(rec)
        if self.job.cfg.train.trackers:
            self.acc.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])

    def _check_finite(self, rec: dict[str, Any]) -> None:
        if not math.isfinite(rec["loss"]):
            last = ckpt.latest(self.root)
            again = f"; {last} is from before it (--resume with a lower lr)" if last else ""
            raise TunelabError(
                f"train: the loss is {rec['loss']} at step {rec['step']} (lr {rec['lr']:.3g}): training diverged, "
                f"so no model is saved{again}. Lower train.lr, keep train.max_grad_norm set, or look for broken "
                f"records; metrics.jsonl has every logged step."
            )

    # ------------------------------------------------------------------ Ctrl-C, SIGTERM
    def _install_sigint(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self._interrupt:  # second signal: stop now
                raise KeyboardInterrupt
            self._interrupt, self._signal = True, signum
            name = "interrupt" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: finishing this step, then saving a checkpoint (Ctrl-C again to abort)", flush=True)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _interrupted(self, at_log: bool) -> bool:
        """All processes must agree before saving; with several processes agree only at log steps
        (one tiny all-reduce there instead of a sync every step)."""
        if self.acc.num_processes == 1:
            return self._interrupt
        if not at_log:
            return False
        flag = torch.tensor(float(self._interrupt), device=self.acc.device)
        return bool(self.acc.reduce(flag, "sum").item() > 0)

    # ------------------------------------------------------------------ result
    def load_best(self) -> None:
        best = self.state.best_step
        if best is not None and best != self.state.step and (self.root / f"step-{best}").is_dir():
            state = self.state
            self.acc.load_state(str(self.root / f"step-{best}"))
            self.state = state
            self.acc.print(f"final/ takes the best checkpoint (step {best}, eval loss {state.best_eval_loss:.4f})")

    def _check_weights(self) -> None:
        """The trained weights are finite (a last update can diverge after the last loss was read). Where the
        weights are sharded each process checks its shard and the counts are summed."""
        bad = torch.zeros((), device=self.acc.device)
        for p in self.params:
            bad += (~torch.isfinite(distributed.local_part(p).detach())).sum()
        n = int(self._sum(bad) if distributed.sharded_params(self.acc) else bad.item())
        if n:
            raise TunelabError(f"train: {n:,} trained weights are NaN or infinite at step "
                               f"{self.state.step}: training diverged, final/ is not written. Lower train.lr.")  # fmt: skip

    def save_final(self) -> Path:
        """final/: standard HF format (peft adapter folder or full model) with the tokenizer, atomically."""
        acc, job = self.acc, self.job
        acc.wait_for_everyone()
        model: Any = distributed.unwrap(acc, self.module).model
        kwargs: dict[str, Any] = {}
        if distributed.gathers_final(acc):  # weights (or their latest values) are spread over processes: gather
            full = acc.get_state_dict(self.module)
            aliases = distributed.tied_aliases(model)  # gathered once per name: keep one, as save_pretrained does
            kwargs["state_dict"] = {n: v for k, v in full.items() if (n := k.removeprefix("model.")) not in aliases}
        final = job.run_dir / "final"
        self._check_weights()
        if acc.is_main_process:
            tmp = job.run_dir / ".final.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            with ckpt.written(tmp, "final model", self.root):
                model.save_pretrained(str(tmp), safe_serialization=True, **kwargs)
                job.tokenizer.save_pretrained(str(tmp))
                ckpt._fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        acc.wait_for_everyone()
        return final
