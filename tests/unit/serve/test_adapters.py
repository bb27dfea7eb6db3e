"""Adapter loading is all-or-nothing: a bad adapter is a 400 with the reason, leaves the base model and the
name untouched, and a good adapter loads under that name afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from servers import serving

from tunelab.errors import TunelabError
from tunelab.models.presets import build_preset
from tunelab.serve.adapters import validate_adapter

CHAT = [{"role": "user", "content": "Say something."}]


def rank_mismatch(root: Path) -> Path:
    """Config says r=4, the weights are r=16."""
    from peft import LoraConfig, get_peft_model

    model, _ = build_preset("tiny")
    get_peft_model(model, LoraConfig(r=16, lora_alpha=8, target_modules="all-linear")).save_pretrained(root / "r16")
    cfg = json.loads((root / "r16" / "adapter_config.json").read_text())
    (root / "r16" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 4}))
    return root / "r16"


def truncated(root: Path, good: Path) -> Path:
    shutil.copytree(good, root / "cut")
    f = root / "cut" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return root / "cut"


@pytest.fixture(scope="module")
def bad(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"rank": rank_mismatch(root), "truncated": truncated(root, runs["lora2"] / "final")}


def test_validation_names_the_problem(bad: dict[str, Path], runs) -> None:
    base, _ = build_preset("tiny")
    with pytest.raises(TunelabError, match=r"lora_A.weight has shape \[16, \d+\]; adapter_config.json says rank \[4\]"):
        validate_adapter(bad["rank"], base)
    with pytest.raises(TunelabError, match=r"adapter_model.safetensors: truncated \(tensor .* ends at byte"):
        validate_adapter(bad["truncated"], base)
    validate_adapter(runs["lora2"] / "final", base)  # a good one passes
    wide, _ = build_preset("tiny-1m")  # hidden 128: the tiny adapter's shapes do not fit
    with pytest.raises(
        TunelabError, match=r"has shape \[4, 176\]; the base model's model.layers.0.mlp.down_proj has in_features 352"
    ):
        validate_adapter(runs["lora2"] / "final", wide)


def test_a_failed_load_changes_nothing_and_frees_the_name(runs, bad, tmp_path) -> None:
    dirs = [str(bad["rank"].parent), str(runs["lora2"].parent)]
    with serving(runs["full"], tmp_path, adapter_dirs=dirs) as api:
        url = api.url + "/admin/adapters"

        def ask(model: str) -> str:
            r = api.client.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0)
            return r.choices[0].message.content

        before = ask("base")
        for folder, reason in [(bad["rank"], "says rank [4]"), (bad["truncated"], "truncated")]:
            r = httpx.post(url, json={"name": "x", "path": str(folder)}, headers=api.admin)
            assert r.status_code == 400 and reason in r.json()["error"]["message"]
            assert httpx.get(url, headers=api.admin).json()["adapters"] == []
        assert ask("base") == before  # the served base model is untouched
        assert httpx.post(url, json={"name": "x", "path": str(runs["lora2"])}, headers=api.admin).status_code == 200
        lora = ask("x")
        assert lora != before and ask("base") == before
        again = httpx.post(url, json={"name": "x", "path": str(runs["lora2"])}, headers=api.admin)
        assert again.status_code == 409 and again.json()["error"]["code"] == "name_in_use"
