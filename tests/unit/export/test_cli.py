"""The export/verify and serve Typer commands through Typer's runner (tunelab.cli wires them in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from archs import trained_model
from run_factory import make_run
from typer.testing import CliRunner

from tunelab.cli.export import export_cmd, verify_cmd
from tunelab.cli.serve import _adapters, serve_key_cmd
from tunelab.config import ModelConfig, RunConfig, TuningConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.serve.security import hash_key

app = typer.Typer()
app.command("export")(export_cmd)
app.command("verify")(verify_cmd)
app.command("serve-key")(serve_key_cmd)


def trained_run(root: Path) -> Path:
    """A full-tuning run folder whose model predicts confidently (a random tiny model's near-uniform logits let
    q8_0's rounding flip greedy choices, which verify rightly reports)."""
    run = root / "run"
    model, tok = trained_model("llama")
    model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    cfg = RunConfig(model=ModelConfig(name_or_path=str(run / "final")), tuning=TuningConfig(mode="full"))
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def test_export_then_verify(tmp_path: Path) -> None:
    run = trained_run(tmp_path)
    r = CliRunner().invoke(app, ["export", str(run), "--format", "gguf", "--gguf-type", "q8_0", "--no-check"])
    assert r.exit_code == 0, r.output
    out = run / "exports" / "gguf-q8_0"
    assert json.loads((out / "export.json").read_text())["file"] == "run-q8_0.gguf"
    (tmp_path / "p.txt").write_text("Hi there\nName a color.\n")
    r = CliRunner().invoke(
        app,
        [
            "verify",
            str(out),
            "--against",
            str(run),
            "--prompts",
            str(tmp_path / "p.txt"),
            "--max-new-tokens",
            "8",
        ],
    )
    assert r.exit_code == 0, r.output
    report = r.output[r.output.index("{\n") : r.output.rindex("}") + 1]
    assert json.loads(report)["prompts"] == 2 and "export matches its run" in r.output


def test_serve_key_prints_a_key_and_its_hash() -> None:
    r = CliRunner().invoke(app, ["serve-key", "alice"])
    key = r.output.split("key (shown once): ")[1].split()[0]
    assert f"alice {hash_key(key)}" in r.output


def test_adapter_option_parsing() -> None:
    assert _adapters(["a=/x", "b=runs/y"]) == {"a": "/x", "b": "runs/y"}
    with pytest.raises(TunelabError, match="expected NAME=PATH"):
        _adapters(["nopath"])


def test_export_verifies_by_default(tmp_path: Path) -> None:
    """The default `--check` runs verify in the same command (it once crashed on a typer OptionInfo default)."""
    run = make_run(tmp_path, "run", lora_seed=3)
    r = CliRunner().invoke(app, ["export", str(run), "--format", "merged", "-o", str(tmp_path / "exported")])
    assert r.exit_code == 0, r.output
    assert "export matches its run" in r.output and '"passed": true' in r.output
