"""Models with a task head instead of the LM head: sequence classification (classify: one logit per label;
reward: one scalar) and token classification (ner), built from a preset, a folder or a packaged model.

- The label names go into the model config (id2label/label2id), so a full final/ is self-describing;
  final/head.json (`write_head_info`) records the method and labels for every head run, adapters too,
  so a run can be loaded back (and refused by generate/chat/serve/export) without guessing.
- A decoder (Llama) head scores the last non-pad token: config.pad_token_id is set to the tokenizer's.
- A preset keeps the body weights of the causal preset of the same seed; its head is new. A folder
  model gets a new head when its checkpoint has none (a BERT encoder, a causal LM); that is said once.
- A reward model's new head starts at zero: every reward is 0 at step 0 and the loss starts at log 2.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config import ModelConfig
from tunelab.data.heads import ClassItem, TagItem, collate_labelled, collate_tagged
from tunelab.errors import TunelabError
from tunelab.models.load import load_model, load_pretrained
from tunelab.models.presets import is_preset

# Head kinds (a method's registry entry names one): classes per sequence, classes per token, or one score
# per sequence that starts at zero (a reward model). `task` is the transformers/peft task each one is.
HEAD_KINDS = ("seq", "token", "scalar")
TASK_OF = {"seq": "seq", "token": "token", "scalar": "seq"}
PEFT_TASK = {"seq": "SEQ_CLS", "token": "TOKEN_CLS", "scalar": "SEQ_CLS"}
HEAD_NAMES = ("score", "classifier")  # what transformers calls the head (decoders: score, encoders: classifier)
HEAD_INFO = "head.json"
REPLACED_HEADS = ("lm_head.", "cls.")  # a checkpoint's own head that the task head replaces: causal LM, BERT MLM


def auto_class(kind: str) -> Any:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForSequenceClassification if kind == "seq" else AutoModelForTokenClassification


def head_labels(head: str, labels: list[str]) -> dict[str, Any]:
    names = ["reward"] if head == "scalar" else labels
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}  # fmt: skip


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The task head (and an encoder's pooler, which sits between the last block and the head)."""
    found = [m for n in HEAD_NAMES if isinstance(m := getattr(model, n, None), nn.Module)]
    pooler = getattr(getattr(model, "base_model", None), "pooler", None)
    return found + ([pooler] if isinstance(pooler, nn.Module) else [])


def head_model_from(causal_lm: Any, kind: str, labels: dict[str, Any], pad_token_id: int | None,
                    zero_head: bool = False) -> nn.Module:  # fmt: skip
    """A head model of `kind` sharing the causal LM's body weights (its head is new)."""
    raw = {k: v for k, v in causal_lm.config.to_dict().items() if k not in ("id2label", "label2id", "num_labels")}
    cfg = causal_lm.config.__class__.from_dict({**raw, **labels, "pad_token_id": pad_token_id})
    model = auto_class(kind).from_config(cfg)
    missing, _ = model.load_state_dict(causal_lm.state_dict(), strict=False)
    body_missing = [k for k in missing if not k.startswith(HEAD_NAMES)]
    if body_missing:
        raise TunelabError(f"{type(model).__name__}: body weights not found in the causal LM: {body_missing[:5]}")
    if zero_head:
        _zero(model)
    return model.to(next(causal_lm.parameters()).dtype)


def _zero(model: nn.Module) -> None:
    for head in head_modules(model)[:1]:
        for p in head.parameters():
            nn.init.zeros_(p)


def load_head_model(cfg: ModelConfig, head: str, labels: list[str] | None, pad_token_id: int | None,
                    dtype: torch.dtype | None = None, log: Any = print) -> Any:  # fmt: skip
    """A preset or folder with a `head` (seq, token or scalar) for `labels` (a scalar head has one output);
    labels None keeps the labels a saved head model carries."""
    kind = TASK_OF[head]
    spec = head_labels(head, labels) if labels is not None else {}
    if is_preset(cfg.name_or_path):
        return head_model_from(load_model(cfg, dtype), kind, spec, pad_token_id, zero_head=head == "scalar")
    with _held_logs() as held:
        try:
            model, info = load_pretrained(auto_class(kind), cfg, dtype, output_loading_info=True,
                                          pad_token_id=pad_token_id, **spec)  # fmt: skip
        except (ValueError, RuntimeError) as e:  # e.g. a head of another size in the checkpoint
            raise TunelabError(f"model.name_or_path {cfg.name_or_path!r}: cannot load it with a {len(labels or [])}-"
                               f"label {kind} head: {str(e).splitlines()[0]}") from None  # fmt: skip
        missing = info.get("missing_keys", [])
        new = sorted({k.split(".")[0] for k in missing if k.startswith(HEAD_NAMES)})
        only_head = all(k.startswith(HEAD_NAMES) for k in missing) and not info.get("mismatched_keys")
        only_head &= all(k.startswith(REPLACED_HEADS) for k in info.get("unexpected_keys", []))
        held.pass_on(drop="LOAD REPORT" if only_head else None)
    if new:
        outputs = model.config.num_labels
        log(f"new {kind}-classification head {', '.join(new)} ({outputs} outputs) on {cfg.name_or_path}")
        if head == "scalar":
            _zero(model)
    return model


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.kept: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def pass_on(self, drop: str | None = None) -> None:
        """Keep the held records for passing on when the hold ends, except those whose message contains `drop`."""
        self.kept += [r for r in self.records if drop is None or drop not in r.getMessage()]
        self.records = []


@contextmanager
def _held_logs() -> Iterator[_Held]:
    """Hold back what transformers logs while a head model loads. Its LOAD REPORT lists the new head's weights as
    MISSING (and a causal LM's lm_head as UNEXPECTED), which is the point of a new head; tunelab says so in one
    line. The caller passes the held records on, the report too when the load found anything else (other
    missing, unexpected or mismatched weights, an error). Propagation is held too: with it on (pytest's log
    capture, an app's logging setup) the records would reach the root logger's handlers around the hold."""
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger()  # the "transformers" logger, which has its own handler
    before, propagate = logger.handlers[:], logger.propagate
    held = _Held()
    logger.handlers, logger.propagate = [held], False
    try:
        yield held
    except BaseException:
        held.pass_on()  # e.g. transformers' report says which weights did not fit
        raise
    finally:
        logger.handlers, logger.propagate = before, propagate
        for record in held.kept:  # its handlers, its parents' if it propagates, else logging's last resort
            logger.handle(record)


# --------------------------------------------------------------------------- runs


def write_head_info(folder: Path, method: str, head: str, labels: list[str]) -> None:
    info = {"method": method, "head": head, "task": TASK_OF[head], "labels": head_labels(head, labels)["id2label"]}
    info["labels"] = list(info["labels"].values())
    (folder / HEAD_INFO).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")


def read_head_info(folder: str | Path) -> dict[str, Any] | None:
    """The head a model folder (or run directory) carries, or None for a causal LM."""
    p = Path(folder)
    for cand in (p / HEAD_INFO, p / "final" / HEAD_INFO):
        if cand.is_file():
            return dict(json.loads(cand.read_text()))
    config = p / "config.json"
    if config.is_file():  # a head model saved by other tools: transformers names the task in architectures
        archs = json.loads(config.read_text()).get("architectures") or []
        kinds = [a for a in archs if a.endswith(("ForSequenceClassification", "ForTokenClassification"))]
        if kinds:
            return {"method": None, "task": "seq" if "Sequence" in kinds[0] else "token", "labels": None}
    return None


def head_kind(info: dict[str, Any]) -> str:
    """The head kind of a head.json; files written before `head` was recorded name the method instead."""
    return str(info.get("head") or ("scalar" if info.get("method") == "reward" else info["task"]))


def refuse_head(path: str | Path, verb: str) -> None:
    """generate/chat/serve/export work on language models; a classifier or reward model has no LM head."""
    info = read_head_info(path)
    if info is None:
        return
    what = {"seq": "a sequence-classification model", "token": "a token-classification model"}[info["task"]]
    labels = info.get("labels") or []
    if head_kind(info) == "scalar":
        what, labels = "a reward model (one scalar per sequence)", []
    named = f" (labels: {', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''})" if labels else ""
    results = f"{Path(path) / 'eval'}/" if (Path(path) / "final").is_dir() else "its run's eval/ folder"
    raise TunelabError(f"{verb}: {path} is {what}{named}: it scores text and cannot generate it. Its eval results "
                       f"are in {results}; in Python, tunelab.models.loader.load(RUN) loads it.")  # fmt: skip


# --------------------------------------------------------------------------- inference


def token_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, len, tags) logits of the input tokens. Prompt tuning prepends its virtual tokens to the
    input, so the model returns that many extra positions first: they are dropped to line up with labels."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dim() != 3:
        raise TunelabError(f"method ner needs a token-classification model, got logits {tuple(logits.shape)}")
    return logits[:, logits.shape[1] - input_ids.shape[1] :]


def predict_classes(model: nn.Module, items: Sequence[ClassItem], pad_id: int, batch_size: int = 64) -> list[int]:
    device = next(model.parameters()).device
    out: list[int] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            b = collate_labelled(items[s : s + batch_size], pad_id)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            out += logits.argmax(-1).tolist()
    return out


def predict_tags(model: nn.Module, items: Sequence[TagItem], pad_id: int, batch_size: int = 64) -> list[list[int]]:
    """Per item, a tag id for every word: the argmax at its first token, or -1 for a word cut by truncation."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            b = collate_tagged(chunk, pad_id)
            best = token_logits(model, b["input_ids"].to(device), b["attention_mask"].to(device)).argmax(-1).tolist()
            out += [[best[row][i] if i >= 0 else -1 for i in it.first] for row, it in enumerate(chunk)]
    return out
