"""The whole feedback loop on the quickstart task with real HTTP on 127.0.0.1 (loop_scenario.py): serve v1 (a LoRA
adapter over v0) as `support`; send fresh messages, half about a product v1 never saw; post the right answer as
users' corrections; review them through /admin/review; export; retrain (continuing v1's adapter); gate against v1
with paired bootstrap CIs; deploy when the gates pass (refused when they fail); measure a second held-out set before
and after on the server; roll back and get v1's answers back exactly. Writes the measurements to
$TUNELAB_LOOP_NOTE (default: loop_note.json in the test's tmp folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from loop_scenario import fields_right, make_runs, messages, serving

from tunelab.errors import TunelabError
from tunelab.eval.stats import paired_bootstrap
from tunelab.feedback.deploy import deploy, rollback
from tunelab.feedback.export import ExportOptions, export
from tunelab.feedback.lineage import lineage, render
from tunelab.feedback.retrain import RetrainOptions, retrain

pytestmark = pytest.mark.slow
TRAFFIC = int(os.environ.get("TUNELAB_LOOP_TRAFFIC", 160))  # messages users send, half about the new product
EPOCHS = float(os.environ.get("TUNELAB_LOOP_EPOCHS", 4))


def score(srv, msgs) -> tuple[list[str], list[float]]:
    """The served answers and, per message, the share of fields right."""
    answers = [srv.ask(m["messages"])[1] for m in msgs]
    return answers, [sum(fields_right(a, m["answer"])) / 3 for a, m in zip(answers, msgs)]


def test_feedback_to_deployed_improvement_and_back(tmp_path: Path) -> None:
    runs = make_runs(tmp_path, v0_steps=150, v1_steps=30, eval_n=30)
    with serving(runs.v0, tmp_path) as srv:
        deploy(runs.v1, srv.url, "support", srv.store, srv.admin_key, promoted_by="ops", skip_gates=True)
        traffic, held_out = messages(TRAFFIC, seed=11), messages(40, seed=12)
        before, right_before = score(srv, held_out)

        corrected = 0
        for m in traffic:  # users: a thumbs up when every field is right, else the right answer
            rid, answer = srv.ask(m["messages"])
            truth = json.dumps(m["answer"])
            ok = sum(fields_right(answer, m["answer"])) == 3
            body = {"request_id": rid, "rating": 1} if ok else {"request_id": rid, "rating": -1, "corrected": truth}
            corrected += not ok
            assert httpx.post(srv.url + "/v1/feedback", json=body, headers=srv.user).status_code == 200
        review = srv.url + "/admin/review/items"
        queue = httpx.get(review, params={"limit": 500}, headers=srv.admin).json()["data"]
        assert len(queue) == len(traffic) + len(held_out)
        for it in queue:  # the reviewer takes users' corrections and approves what users liked
            body = ({"decision": "edit", "answer": it["corrected"]} if it["corrected"]
                    else {"decision": "approve"} if it["rating"] == 1 else {"decision": "skip"})  # fmt: skip
            r = httpx.post(f"{review}/{it['request_id']}", json=body | {"reviewer": "ana"}, headers=srv.admin)
            assert r.status_code == 200, r.text

        manifest = export(srv.store, tmp_path / "fb", ExportOptions(against=str(runs.v1)))
        assert manifest["not_exported"] == {"skipped": len(held_out)}
        assert manifest["files"]["sft"]["rows"] == len(traffic) - sum(manifest["dropped"]["sft"].values())
        assert manifest["files"]["preference"]["rows"] <= corrected

        result = retrain(runs.v1, tmp_path / "fb", RetrainOptions(holdout=0.3, epochs=EPOCHS, name="v2"))
        gates = json.loads((result.run / "gates.json").read_text())
        assert gates["passed"] == all(c["passed"] for c in gates["checks"]) == result.gates.passed
        assert [c["name"] for c in gates["checks"]][0] == "feedback_gain"
        record = json.loads((result.run / "retrain.json").read_text())
        assert record["method"] == "sft" and record["continues"] == str((runs.v1 / "final").resolve())

        if not result.gates.passed:  # a stopped run is never deployed (--skip-gates covers runs without gates only)
            for skip in (False, True):
                with pytest.raises(TunelabError, match="its gates failed"):
                    deploy(result.run, srv.url, "support", srv.store, srv.admin_key, skip_gates=skip)
            assert score(srv, held_out)[0] == before
            pytest.fail(f"the retrained run's gates failed: {[c['detail'] for c in gates['checks']]}")
        deploy(result.run, srv.url, "support", srv.store, srv.admin_key, promoted_by="ana")
        after, right_after = score(srv, held_out)
        assert after != before  # v2 serves now
        rollback("support", srv.url, srv.store, srv.admin_key, promoted_by="ana")
        assert score(srv, held_out)[0] == before  # v1's answers, exactly
        chain = lineage(str(result.run), srv.store)
        by_name = lineage("support", srv.store)

    assert chain["parent"]["run"] == str(runs.v1.resolve()) and chain["parent"]["parent"]["run"] == str(runs.v0)
    assert chain["feedback"]["unchanged"] is True and chain["eval"]["gates"]["passed"] is True
    assert [d["action"] for d in chain["deployments"]] == ["deploy"] and chain["deployments"][0]["until"]
    assert by_name["serving"] == str(runs.v1.resolve()) and by_name["run"]["run"] == str(runs.v1.resolve())
    assert [d["action"] for d in by_name["deployments"]] == ["deploy", "deploy", "rollback"]
    assert "feedback " in render(chain) and "unchanged) from run" in render(chain)

    ci = paired_bootstrap(right_before, right_after, seed=0)
    note = {"gates_passed": result.gates.passed, "gates": [c["detail"] for c in gates["checks"]],
            "corrected": corrected, "export": manifest["files"], "dropped": manifest["dropped"],
            "held_out_fields_right": {"v1": ci.mean_a, "v2": ci.mean_b, "diff": ci.diff,
                                      "ci95": [ci.ci_low, ci.ci_high], "n": ci.n}}  # fmt: skip
    Path(os.environ.get("TUNELAB_LOOP_NOTE", tmp_path / "loop_note.json")).write_text(json.dumps(note, indent=1))
