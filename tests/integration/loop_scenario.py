"""The feedback loop on the quickstart task, for test_feedback_loop.py: runs, a real server, traffic and scoring.

v0 is a quickstart-like full fine-tune of tiny-1m (few steps: it gets many items wrong) and is the served base;
v1 is a short LoRA run over v0/final, the adapter clients use under the name `support`. Messages come from the
quickstart task with a seed of their own (fresh order ids and name pairings), never from the training data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from tunelab.api import load_config, train
from tunelab.data.quickstart_task import SYSTEM, make_example, write_splits
from tunelab.quickstart import write_project
from tunelab.serve.config import ServeConfig
from tunelab.serve.runtime import ServerThread, build_app, build_engine
from tunelab.serve.security import new_api_key

FIELDS = ("intent", "item", "priority")


@dataclass
class Runs:
    project: Path
    v0: Path  # the served base (full fine-tune)
    v1: Path  # the adapter in production


NEW_ITEM = "blender"  # the product launched after v0 was trained: no training row names it


def make_runs(root: Path, v0_steps: int, v1_steps: int, eval_n: int) -> Runs:
    """v0 (full, from scratch) and v1 (LoRA over v0/final) on the quickstart data without NEW_ITEM; their eval is
    the first `eval_n` rows of the test split (without NEW_ITEM too)."""
    config = write_project(root, "tiny-1m", 1.0, preset=True)
    for split in ("train", "eval", "test"):
        path = root / "data" / f"{split}.jsonl"
        rows = [
            r
            for r in path.read_text().splitlines()
            if json.loads(json.loads(r)["messages"][2]["content"])["item"] != NEW_ITEM
        ]
        path.write_text("\n".join(rows) + "\n")
    common = [f"output.dir={root / 'runs'}", "train.log_every=1000", "eval.baseline=false",
              f"eval.data=[{{path: {root / 'data' / 'test.jsonl'}, max_samples: {eval_n}}}]"]  # fmt: skip
    v0 = train(load_config(config, [*common, "output.name=v0", f"train.max_steps={v0_steps}", "data.check=null",
                                    "eval.forgetting.enabled=false"]), config_path=config)  # fmt: skip
    v1_cfg = load_config(config, [*common, "output.name=v1", f"model.name_or_path={v0 / 'final'}", "tuning.mode=lora",
                                  "tuning.lora.r=8", "train.lr=3e-3", f"train.max_steps={v1_steps}"])  # fmt: skip
    return Runs(root, v0, train(v1_cfg, config_path=config))


def messages(n: int, seed: int, new_share: float = 0.5) -> list[dict[str, Any]]:
    """Fresh quickstart messages, `new_share` of them about NEW_ITEM: {messages: [system, user], answer: dict}."""
    rng = random.Random(seed)
    first, last = ["Aya", "Bo", "Cem", "Dina", "Eli", "Fay"], ["Ito", "Ng", "Ruiz", "Shah", "Vogel", "Wong"]
    want_new, out = round(n * new_share), []
    while len(out) < n:
        row = make_example(rng, str(rng.randint(100000, 999999)), f"{rng.choice(first)} {rng.choice(last)}")
        answer = json.loads(row["messages"][2]["content"])
        new = sum(m["answer"]["item"] == NEW_ITEM for m in out)
        if (answer["item"] == NEW_ITEM and new < want_new) or (
            answer["item"] != NEW_ITEM and len(out) - new < n - want_new
        ):
            out.append({"messages": row["messages"][:2], "answer": answer})
    return out


def fields_right(answer: str, want: dict[str, str]) -> list[float]:
    """1/0 per field (intent, item, priority); an answer that is not a JSON object gets none right."""
    try:
        got = json.loads(answer)
    except ValueError:
        return [0.0] * len(FIELDS)
    if not isinstance(got, dict):
        return [0.0] * len(FIELDS)
    return [float(got.get(f) == want[f]) for f in FIELDS]


@dataclass
class Server:
    url: str
    store: str
    client: openai.OpenAI
    user_key: str
    admin_key: str

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_key}"}

    @property
    def user(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.user_key}"}

    def ask(self, msgs: list[dict[str, str]], model: str = "support") -> tuple[str, str]:
        """(request id, answer): greedy, one request at a time (the same batch every time: reproducible)."""
        raw = self.client.chat.completions.with_raw_response.create(model=model, messages=msgs, max_tokens=64,
                                                                    temperature=0)  # fmt: skip
        return raw.headers["x-request-id"], raw.parse().choices[0].message.content or ""


@contextmanager
def serving(base: Path, tmp: Path) -> Iterator[Server]:
    """The base model on 127.0.0.1 with request logging; adapters come and go through /admin."""
    key, line = new_api_key("alice")
    admin_key, admin_line = new_api_key("ops")
    (tmp / "keys").write_text(f"{line}\n{admin_line}\n")
    store = f"sqlite:///{tmp / 'serve.db'}"
    cfg = ServeConfig.model_validate({
        "auth": {"keys_file": str(tmp / "keys"), "admin_key_ids": ["ops"]}, "adapter_dirs": [str(base.parent)],
        "limits": {"burst": 100000, "requests_per_minute": 600000, "max_tokens": 128},
        "store": {"enabled": True, "url": store},
    })  # fmt: skip
    with ServerThread(build_app(build_engine(base, cfg), cfg)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        yield Server(srv.url, store, client, key, admin_key)


SYSTEM_MESSAGE = {"role": "system", "content": SYSTEM}
__all__ = ["FIELDS", "Runs", "Server", "fields_right", "make_runs", "messages", "serving", "write_splits"]
