"""The studio's web UI in a real headless Chromium (playwright driving Debian's chromium; skipped with the reason
where either is missing): the runs list, a run page whose curve grows while a job trains, a comparison of three
runs, the config form's unknown-key error, the side-by-side chat, the dataset preview, the feedback review queue. Every
page works offline: a request to anything but the studio is recorded and fails the test.

Screenshots go to $TUNELAB_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from studiokit import WORDS, Running, chat_rows, job_defaults, running_studio, studio_config, wait_for, write_jsonl

from tunelab import api

CHROMIUM = os.environ.get("TUNELAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RUNS = {"lr-small": 1e-3, "lr-mid": 5e-3, "lr-high": 2e-2}

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; make setup does)", allow_module_level=True)


def _train_runs(tmp: Path) -> None:
    """Three real tiny LoRA runs that differ in lr, each evaluated against its base (eval/comparison.json)."""
    train = write_jsonl(tmp / "train.jsonl", chat_rows(WORDS[:8]))
    valid = write_jsonl(tmp / "valid.jsonl", chat_rows(WORDS[8:], verb="Repeat"))
    for name, lr in RUNS.items():
        cfg = api.load_config(None, [
            "model.name_or_path=tiny", "tuning.mode=lora", "tuning.lora.r=4", f"data.train=[{{path: {train}}}]",
            f"data.eval=[{{path: {valid}}}]", "data.max_length=64", "train.max_steps=6", "train.batch_size=4",
            f"train.lr={lr}", "train.log_every=1", "train.eval_every=3", "train.threads=1", "eval.metrics=[loss]",
            "eval.forgetting.enabled=false", "eval.bootstrap_resamples=200", f"output.dir={tmp / 'runs'}",
            f"output.name={name}",
        ])  # fmt: skip
        api.train(cfg)


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("studio-ui")
    _train_runs(tmp)
    write_jsonl(tmp / "dup.jsonl", chat_rows(["red", "red", "kite"]))
    cfg = studio_config(tmp, store=True, defaults=job_defaults(max_steps=4000, save_every=1000))
    with running_studio(tmp, cfg, adapters={"lr-high": str(tmp / "runs" / "lr-high")}) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                              args=ARGS)  # fmt: skip
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TUNELAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any, studio: Running) -> Iterator[Any]:
    """A page that holds the admin key (as a person who typed it would) and refuses to leave the studio."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('tunelab-studio-key', {json.dumps(studio.admin_key)})")
    outside: list[str] = []
    here = urlparse(studio.url).netloc

    def only_here(route: Any) -> None:
        if urlparse(route.request.url).netloc == here:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_here)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert outside == [], f"the studio fetched from outside: {outside}"
    assert errors == [], f"script errors: {errors}"


def test_runs_list(page: Any, studio: Running, shots: Path) -> None:
    page.goto(studio.url + "/studio")
    for name in RUNS:
        page.wait_for_selector(f"input[data-run='{name}']")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 3
    for i in range(3):
        assert rows.nth(i).locator("[data-status]").inner_text() == "finished"
        assert "6/6" in rows.nth(i).inner_text() and "sft" in rows.nth(i).inner_text()
    page.check("input[data-run='lr-small']")
    page.check("input[data-run='lr-high']")
    assert page.locator("#compare").is_enabled()
    page.screenshot(path=str(shots / "runs-list.png"), full_page=True)


def test_compare_three_runs(page: Any, studio: Running, shots: Path) -> None:
    page.goto(studio.url + "/studio/compare?runs=" + ",".join(RUNS))
    loss = page.locator("[data-chart='loss']")
    loss.locator("canvas").wait_for()
    assert loss.get_attribute("data-points") == str(3 * 6)  # three runs, six logged steps each, overlaid
    assert page.locator("[data-chart='eval_loss']").get_attribute("data-points") == str(3 * 2)
    assert loss.locator(".u-legend").inner_text().count("lr-") == 3
    table = page.locator("#metrics tbody tr")
    assert table.count() == 3  # each run: its loss against its base, with the paired CI
    for i, name in enumerate(RUNS):
        cells = table.nth(i).locator("td")
        assert cells.nth(0).inner_text() == name and cells.nth(1).inner_text() == "loss"
        assert cells.nth(5).inner_text().startswith("[") and cells.nth(6).inner_text() in ("better", "worse",
                                                                                            "no significant difference")  # fmt: skip
    diff = page.locator("#diff tbody tr", has_text="train.lr")
    assert diff.count() == 1 and "0.001" in diff.inner_text() and "0.02" in diff.inner_text()
    page.select_option("#runA", "lr-mid")
    page.select_option("#runB", "lr-high")
    page.click("#comparePair")
    page.wait_for_selector("#pairResult h2")
    pair = httpx.post(studio.url + "/studio/api/compare/pair", json={"a": "lr-mid", "b": "lr-high"},
                      headers={"authorization": f"Bearer {studio.admin_key}"}, timeout=60)  # fmt: skip
    flipped = pair.json()["comparison"]["flipped"]
    shown = page.locator("#pairResult table").nth(1).locator("tbody tr") if flipped else None
    if flipped:
        assert shown.count() == len(flipped)
        directions = [shown.nth(i).get_attribute("class") for i in range(shown.count())]
        assert directions == sorted(directions, key=lambda d: d != "regressed")  # regressions first
    page.screenshot(path=str(shots / "compare-3-runs.png"), full_page=True)


def test_config_form_shows_tunelabs_unknown_key_error(page: Any, studio: Running, shots: Path) -> None:
    page.goto(studio.url + "/studio/new")
    page.wait_for_selector("#valid, #invalid")
    page.fill("textarea#config", "model:\n  name_or_path: tiny\ntrain:\n  max_steps: 3\n  lrr: 0.1\n")
    error = page.wait_for_selector("#invalid")
    assert "config.yaml:5: unknown key 'train.lrr' (did you mean 'lr'?)" in error.inner_text()
    assert page.locator("#submit").is_disabled()
    page.screenshot(path=str(shots / "new-run-unknown-key.png"), full_page=True)
    page.fill("textarea#config", "model:\n  name_or_path: tiny\ntrain:\n  max_steps: 3\n  lr: 0.1\n")
    assert "valid: sft (lora) on tiny" in page.wait_for_selector("#valid").inner_text()
    assert page.locator("#submit").is_enabled()


def test_side_by_side_chat(page: Any, studio: Running, shots: Path) -> None:
    page.goto(studio.url + "/studio/chat")
    page.wait_for_selector("#modelB option[value='lr-high']", state="attached")
    page.select_option("#modelA", "base")
    page.select_option("#modelB", "lr-high")
    page.fill("#prompt", "Say red.")
    page.click("#send")
    replies = []
    for side in ("#sideA", "#sideB"):
        page.wait_for_selector(f"{side} .turn.assistant[data-done]")
        assert page.locator(f"{side} .turn.user").inner_text() == "Say red."
        replies.append(page.locator(f"{side} .turn.assistant").text_content())
    for model, shown in zip(("base", "lr-high"), replies):
        r = studio.admin.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say red."}],
                                                 max_tokens=64, temperature=0)  # fmt: skip
        assert shown == shown_as(r.choices[0].message.content), model  # what that model says, greedy
    page.screenshot(path=str(shots / "chat-side-by-side.png"), full_page=True)


def shown_as(reply: str | None) -> str:
    """How the chat page shows a reply (studio.js replyText)."""
    if not reply:
        return "(empty reply)"
    return reply if reply.strip() else f"({len(reply)} whitespace characters)"


def test_live_run_page_curve_grows_while_the_job_trains(page: Any, studio: Running, shots: Path) -> None:
    page.goto(studio.url + "/studio/new")
    config = (f"model:\n  name_or_path: tiny\ntuning:\n  mode: lora\n  lora: {{r: 4}}\ndata:\n  train:\n"
              f"    - path: {studio.studio.root.parent / 'train.jsonl'}\n  max_length: 64\ntrain:\n  max_steps: 4000\n"
              f"  batch_size: 4\n  log_every: 1\n  threads: 1\neval:\n  baseline: false\n  forgetting: {{enabled: false}}\n")  # fmt: skip
    page.fill("textarea#config", config)
    page.fill("#runName", "live")
    page.wait_for_selector("#valid")
    page.click("#submit")
    page.wait_for_url("**/studio/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.goto(studio.url + "/studio/runs/live")
    loss = page.locator("[data-chart='loss']")
    first = wait_for(lambda: int(loss.get_attribute("data-points") or 0), why="the first logged step")
    grown = wait_for(lambda: (n := int(loss.get_attribute("data-points") or 0)) > first + 3 and n, 120,
                     why="the curve to grow")  # fmt: skip
    assert page.locator("#status").inner_text() == "running"
    assert page.locator("#step").inner_text().endswith("/ 4000")
    assert page.locator("#eta").inner_text() not in ("", "–")
    for chart in ("lr", "grad_norm", "tokens_per_s"):
        assert int(page.locator(f"[data-chart='{chart}']").get_attribute("data-points") or 0) >= first
    page.screenshot(path=str(shots / "run-live.png"), full_page=True)
    page.goto(studio.url + "/studio/jobs/" + job_id)
    page.click("#cancel")
    page.wait_for_selector("[data-status='cancelled']")
    assert grown > first


def test_dataset_preview_shows_the_data_checks_findings(page: Any, studio: Running, shots: Path) -> None:
    path = studio.studio.root.parent / "dup.jsonl"
    page.goto(f"{studio.url}/studio/data?path={path}")
    finding = page.wait_for_selector("#findings tbody tr")
    assert "duplicate" in finding.inner_text() and "line 1, line 2" in finding.inner_text()
    assert page.locator("#rows tbody tr").count() == 3
    page.screenshot(path=str(shots / "data-preview.png"), full_page=True)
    page.goto(f"{studio.url}/studio/data?path=/etc/passwd")
    assert "outside the folders the studio may read" in page.wait_for_selector("#summary .error").inner_text()


def test_feedback_page_is_the_review_queue_and_stores_decisions(page: Any, studio: Running, shots: Path) -> None:
    asked = {}
    for word in ("plum", "fern"):
        r = studio.client.chat.completions.create(model="base", max_tokens=8, temperature=0,
                                                  messages=[{"role": "user", "content": f"Say {word}."}])  # fmt: skip
        asked[word] = r.id
    auth = {"authorization": f"Bearer {studio.key}"}
    fb = httpx.post(studio.url + "/v1/feedback", headers=auth, timeout=30,
                    json={"request_id": asked["fern"], "rating": -1, "comment": "should say fern"})  # fmt: skip
    assert fb.status_code == 200, fb.text
    page.goto(studio.url + "/studio/feedback")
    for rid in asked.values():
        page.wait_for_selector(f".item[data-request='{rid}']")
    fern = page.locator(f".item[data-request='{asked['fern']}']")
    assert "Say fern." in fern.locator(".turn.user").inner_text() and "rating -1" in fern.inner_text()
    assert "should say fern" in fern.inner_text()
    page.locator(f".item[data-request='{asked['plum']}'] button[data-decision='approve']").click()
    fern.locator("textarea.answer").fill("fern")
    fern.locator("button[data-decision='edit']").click()
    page.wait_for_selector(f".item[data-request='{asked['fern']}'] .decided:has-text('edit by')")
    page.screenshot(path=str(shots / "feedback-review.png"), full_page=True)
    admin = {"authorization": f"Bearer {studio.admin_key}"}
    stored = {w: httpx.get(f"{studio.url}/admin/review/items/{rid}", headers=admin, timeout=30).json()
              for w, rid in asked.items()}  # fmt: skip
    assert [(h["decision"], h["answer"], h["reviewer"]) for h in stored["fern"]["history"]] == [("edit", "fern", "ops")]
    assert [h["decision"] for h in stored["plum"]["history"]] == ["approve"]
    page.reload()  # the default filter shows what is not yet reviewed: both are gone
    page.wait_for_selector("#counts")
    assert page.locator(f".item[data-request='{asked['fern']}']").count() == 0
    assert page.locator(f".item[data-request='{asked['plum']}']").count() == 0


def test_without_the_key_the_studio_asks_for_it(browser: Any, studio: Running) -> None:
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(studio.url + "/studio")
    pg.wait_for_selector(".keybox.shown input")
    assert "API key" in (pg.locator(".keybox input").get_attribute("placeholder") or "")
    assert pg.locator("#runs tbody tr").count() == 0
    pg.fill(".keybox input", studio.admin_key)
    pg.click(".keybox button")
    pg.wait_for_selector("input[data-run='lr-high']")
    context.close()
