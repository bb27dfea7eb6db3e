"""Shared fixtures: every test runs with a temporary home and cache, offline, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Before transformers/huggingface_hub are imported anywhere: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ASSETS = Path(__file__).parent / "assets"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (real data and models live in ../shared beside the checkout)")
    return p


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TUNELAB_HOME", str(home / ".tunelab"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `tunelab` CLI in a subprocess (this checkout's src first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tunelab {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models run fastest on one thread, and CI shares two cores with the test subprocesses."""
    import torch

    torch.set_num_threads(1)


# The slowest tests of `make test` on 2 quiet cores (15 to 40 s each when chosen; 7 to 18 s since the CLI starts
# faster): they run under `make test-all` (-m slow) so that `make test` stays well under 10 minutes. Each path they
# cover also has a faster test in `make test`. Not here, whatever their time: every documented command, the
# quickstart (the main job), train-then-generate, Ctrl-C resume, two-process accumulation, clear CLI errors.
SLOW_BY_TIME = {
    "tests/integration/test_tune_cli.py::test_two_processes_share_one_sqlite_study",
    "tests/integration/test_cli_data.py::test_validate_preference_demo_counts",
    "tests/integration/test_stages_multitask.py::test_failed_gate_stops_the_sequence_and_resume_continues",
    "tests/integration/test_heads_cli.py::test_ner_cli_moves_entity_f1",
    "tests/integration/test_heads_cli.py::test_classify_cli_moves_accuracy_and_saves_labels",
    "tests/integration/test_cli_data.py::test_validate_and_prepare_debug_on_alpaca_demo",
    "tests/unit/studio/test_openai_jobs_api.py::test_a_service_restart_mid_job_resumes_it_from_its_checkpoint",
    "tests/integration/test_grpo_cli.py::test_reward_metric_before_and_after_training_and_in_tunelab_eval",
    "tests/unit/train/test_distributed.py::test_two_processes_match_grad_accumulation[classify]",
    "tests/integration/test_methods_cli.py::test_two_stage_sft_then_dpo",
    "tests/integration/test_grpo_cli.py::test_bad_reward_and_prompt_data_are_clear_errors",
    "tests/integration/test_tune_cli.py::test_an_interrupted_study_resumes_without_redoing_finished_trials",
    "tests/integration/test_cli_data.py::test_prepare_debug_shows_the_tool_call_trained_and_a_template_without_tools_is_refused",
    "tests/integration/test_methods_cli.py::test_kto_lora_on_demo_completions",
    "tests/unit/train/test_distributed.py::test_two_processes_match_grad_accumulation[dpo]",
    "tests/unit/studio/test_studio_browser.py::test_live_run_page_curve_grows_while_the_job_trains",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW_BY_TIME:
            item.add_marker(pytest.mark.slow)
