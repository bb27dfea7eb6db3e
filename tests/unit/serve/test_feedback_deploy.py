"""tunelab deploy / rollback against a real server on 127.0.0.1 (admin API, hot swap) with the registry in the
server's real SQLite store: gates are enforced, answers change with the deployment and come back on rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from servers import serving

from tunelab.errors import TunelabError
from tunelab.feedback.deploy import deploy, rollback
from tunelab.feedback.registry import Registry
from tunelab.serve.store import Store

CHAT = [{"role": "user", "content": "Say something."}]


def gated(src: Path, dst: Path, passed: bool) -> Path:
    """A copy of a LoRA run with the gate report `tunelab retrain` would have written."""
    shutil.copytree(src, dst)
    check = {"name": "no_regression:eval", "passed": passed, "detail": "loss: worse" if not passed else "ok"}
    (dst / "gates.json").write_text(json.dumps({"passed": passed, "metric": "loss", "checks": [check]}))
    return dst


def test_deploy_swaps_records_and_rolls_back(runs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "runs"
    a = gated(runs["lora"], root / "a", True)
    b = gated(runs["lora2"], root / "b", True)
    bad = gated(runs["lora2"], root / "bad", False)
    with serving(runs["full"], tmp_path, adapter_dirs=[str(root)]) as srv:
        store = f"sqlite:///{tmp_path / 'serve.db'}"

        def ask(model: str = "support") -> str:
            r = srv.client.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0)
            return r.choices[0].message.content or ""

        base = ask("base")
        first = deploy(a, srv.url, "support", store, srv.admin_key, promoted_by="ana")
        answer_a = ask()
        assert first["action"] == "deploy" and first["previous_id"] is None and first["promoted_by"] == "ana"
        with pytest.raises(TunelabError, match=r"gates failed \(no_regression:eval: loss: worse\); it is not deployed"):
            deploy(bad, srv.url, "support", store, srv.admin_key)
        assert ask() == answer_a  # a refused deploy leaves the served adapter alone
        second = deploy(b, srv.url, "support", store, srv.admin_key, promoted_by="ana")
        answer_b = ask()
        assert answer_b != answer_a and second["previous_id"] == first["id"]
        assert httpx.get(srv.url + "/admin/adapters", headers=srv.admin).json()["adapters"] == ["support"]

        back = rollback("support", None, store, srv.admin_key, promoted_by="bo")
        assert back["run"] == str(a.resolve()) and ask() == answer_a and ask("base") == base
        gone = rollback("support", srv.url, store, srv.admin_key)
        assert gone["run"] is None
        with pytest.raises(openai.NotFoundError):
            ask()
        s = Store(store)
        try:
            rows = Registry(s).history(name="support")
        finally:
            s.close()
        assert [(r["action"], Path(r["run"]).name if r["run"] else None) for r in rows] == [
            ("deploy", "a"), ("deploy", "b"), ("rollback", "a"), ("rollback", None)]  # fmt: skip
        assert [r["until"] is None for r in rows] == [False, False, False, True]
        assert rows[1]["gates"]["passed"] is True and rows[2]["promoted_by"] == "bo"


def test_deploy_refusals_name_the_problem(runs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "runs"
    a = gated(runs["lora"], root / "a", True)
    ungated = root / "ungated"
    shutil.copytree(runs["lora2"], ungated)
    with serving(runs["full"], tmp_path, adapter_dirs=[str(root)]) as srv:
        store = f"sqlite:///{tmp_path / 'serve.db'}"
        with pytest.raises(TunelabError, match="not a LoRA adapter run"):
            deploy(runs["full"], srv.url, "support", store, srv.admin_key)
        with pytest.raises(TunelabError, match="no gates.json"):
            deploy(ungated, srv.url, "support", store, srv.admin_key)
        row = deploy(ungated, srv.url, "support", store, srv.admin_key, skip_gates=True)
        assert row["gates"] == {"passed": None, "skipped": True, "why": "deployed without gates (--skip-gates)"}
        httpx.post(srv.url + "/admin/adapters", json={"name": "other", "path": str(a)}, headers=srv.admin)
        with pytest.raises(TunelabError, match="serves 'other', but the registry .* has no deployment of it"):
            deploy(a, srv.url, "other", store, srv.admin_key)
        assert deploy(a, srv.url, "other", store, srv.admin_key, adopt=True)["action"] == "adopt"
        with pytest.raises(TunelabError, match=r"-> 403"):
            deploy(a, srv.url, "support", store, srv.key)  # a user key is not an admin key
        with pytest.raises(TunelabError, match="no deployment of 'nobody'"):
            rollback("nobody", srv.url, store, srv.admin_key)
