"""distill through the real CLI: `tunelab train` with a logits teacher (a run directory) and with a completions
teacher behind tunelab's own OpenAI-compatible server (real uvicorn on 127.0.0.1), the tokenizer-mismatch
error, and `tunelab data distill` failing loudly when too many requests fail."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import torch
import yaml
from tests.conftest import run_cli
from tests.unit.methods.distillkit import TINY_SFT, trained_teacher_run

from tunelab.serve.config import ServeConfig
from tunelab.serve.runtime import ServerThread, build_app, build_engine

MAX_PROMPT_TOKENS = 200  # the server refuses longer prompts (HTTP 400): the planted long prompts fail


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return trained_teacher_run(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def server(teacher_run: Path):
    cfg = ServeConfig.model_validate({
        "limits": {"burst": 1000, "requests_per_minute": 60000, "max_prompt_tokens": MAX_PROMPT_TOKENS},
        "guard": {"injection": "off", "pii_input": "off", "pii_output": "off"},
    })  # fmt: skip
    with ServerThread(build_app(build_engine(teacher_run, cfg), cfg)) as srv:
        yield srv


def config(tmp_path: Path, method: dict, **sections: dict) -> Path:
    cfg = {
        "model": {"name_or_path": "tiny"},
        "tuning": {"mode": "full"},
        "method": {"name": "distill", "distill": method},
        "data": {"train": [{"path": str(TINY_SFT), "format": "alpaca"}], "max_length": 128},
        "train": {"max_steps": 3, "batch_size": 4, "log_every": 1, "threads": 1, "warmup_ratio": 0.0},
        "eval": {"baseline": False, "forgetting": {"enabled": False}},
        "output": {"dir": str(tmp_path / "runs"), "name": "kd"},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_logits_distillation_from_a_run_directory(teacher_run: Path, tmp_path: Path) -> None:
    """Full tuning of a fresh tiny student toward a trained teacher, packed: KL falls, agreement rises."""
    path = config(tmp_path, {"teacher": str(teacher_run), "loss": "forward", "temperature": 1.0},
                  data={"packing": True}, train={"max_steps": 12, "lr": 5e-3})  # fmt: skip
    run_cli("train", str(path), cwd=tmp_path)
    run = tmp_path / "runs" / "kd"
    assert (run / "final" / "model.safetensors").is_file()
    train = [r for r in records(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert all({"kl", "ce", "top1_agreement"} <= set(r) for r in train)
    first, last = train[0], train[-3:]
    assert first["kl"] > 1.0  # a confident teacher and a random student
    assert sum(r["kl"] for r in last) / 3 < 0.6 * first["kl"], [r["kl"] for r in train]
    assert sum(r["top1_agreement"] for r in last) / 3 > first["top1_agreement"]
    assert first["loss"] == pytest.approx(first["kl"], rel=1e-5)  # T = 1, ce_weight 0: the loss is the KL


def test_train_refuses_a_teacher_with_another_tokenizer(teacher_run: Path, tmp_path: Path) -> None:
    path = config(tmp_path, {"teacher": str(teacher_run)}, model={"name_or_path": "tiny-1m"})
    proc = run_cli("train", str(path), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert str(teacher_run) in err and "'tiny-1m'" in err and "different tokenizers" in err
    assert "method.distill.mode: completions" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "kd" / "data_card.md").exists()  # refused before the data check


def prompts_file(tmp_path: Path, n: int = 12) -> Path:
    rows = [json.loads(line) for line in TINY_SFT.read_text().splitlines()[:n]]
    rows.insert(3, {"instruction": "Summarize: " + "long text " * 40, "output": ""})
    rows.append({"instruction": "Repeat: " + "abc " * 80, "output": ""})
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_on_completions_from_an_endpoint_teacher(server, tmp_path: Path) -> None:
    """A student with another tokenizer (tiny-1m, BPE) learns from the served byte-level teacher's replies: the
    teacher writes RUN/teacher/ first (2 planted failures counted, allowed by max_failed), then SFT runs on it."""
    prompts = prompts_file(tmp_path)
    gen = {"base_url": server.url + "/v1", "api_key_env": None, "max_new_tokens": 16, "max_failed": 0.2}
    path = config(tmp_path, {"teacher": "base", "mode": "completions", "generation": gen},
                  model={"name_or_path": "tiny-1m"}, tuning={"mode": "lora"},
                  data={"train": [{"path": str(prompts), "format": "alpaca"}]})  # fmt: skip
    proc = run_cli("train", str(path), cwd=tmp_path)
    run = tmp_path / "runs" / "kd"
    assert "12 of 14 prompts answered, 2 failed" in proc.stdout
    written = records(run / "teacher" / "completions.jsonl")
    assert len(written) == 12 and all(r["_teacher"]["model"] == "base" for r in written)
    failed = records(run / "teacher" / "completions.failed.jsonl")
    assert [f["_source"] for f in failed] == [f"{prompts}:4", f"{prompts}:14"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    direct = client.chat.completions.create(model="base", messages=written[1]["messages"][:-1], max_tokens=16,
                                            temperature=0.0, top_p=1.0, seed=0)  # fmt: skip
    assert written[1]["messages"][-1]["content"] == direct.choices[0].message.content
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert [m["path"] for m in manifest] == [str(run / "teacher" / "completions.jsonl")]
    assert manifest[0]["records"] == 12
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train"][0]["path"] == str(prompts)  # config.yaml is what was asked for
    assert (run / "final" / "adapter_config.json").is_file()
    assert [r["step"] for r in records(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


def test_data_distill_exits_2_when_too_many_prompts_fail(server, tmp_path: Path) -> None:
    prompts = prompts_file(tmp_path, n=2)
    out = tmp_path / "out.jsonl"
    proc = run_cli("data", "distill", str(prompts), "--teacher", "base", "--base-url", server.url + "/v1",
                   "--api-key-env", "", "--max-new-tokens", "8", "-o", str(out), cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "2 of 4 prompts answered, 2 failed" in proc.stdout
    assert "2 of 4 prompts got no reply" in proc.stderr and "--max-failed" in proc.stderr
    assert len(records(out)) == 2 and len(records(tmp_path / "out.failed.jsonl")) == 2
