"""The `tunelab` command imports the model libraries only in the verbs that need them: `--help`, the verbs' help
and the light verbs load no torch or transformers (the help no fastapi or sqlalchemy either). When every verb
module imported tunelab.api at start, `tunelab --help` took 7 s. This checks the import graph, not a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO

MODEL_LIBS = ("torch", "transformers")
SERVER_LIBS = ("fastapi", "sqlalchemy")

# Runs the real CLI in-process, then reports the libraries it loaded on stderr's last line.
PROBE = """
import json, sys
from tunelab.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code
libs = [m for m in {libs!r} if m in sys.modules]
print("\\n" + json.dumps({{"exit": code, "loaded": libs}}), file=sys.stderr)
"""


def python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))  # this checkout's src first, as run_cli does
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def probe(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    proc = python(PROBE.format(libs=MODEL_LIBS + SERVER_LIBS), *args, cwd=cwd)
    assert proc.stderr.strip(), proc.stdout
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    return result["exit"], result["loaded"], proc.stdout


def test_importing_the_cli_loads_no_model_library(tmp_path: Path) -> None:
    code = "import sys, tunelab.cli; print([m in sys.modules for m in sys.argv[1:]])"
    proc = python(code, *MODEL_LIBS, *SERVER_LIBS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([False] * 4)


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (["--help"], "Fine-tune LLMs end to end."),
        (["export", "--help"], "GGUF weights: f32, f16"),  # the types the gguf package writes, found at help time
        (["deploy", "--help"], "TUNELAB_ADMIN_KEY"),
        (["data", "check", "--help"], "--near-threshold"),
        (["jobs", "--help"], "submit"),
    ],
)
def test_help_loads_no_model_or_server_library(tmp_path: Path, args: list[str], shows: str) -> None:
    code, loaded, out = probe(args, tmp_path)
    assert code == 0 and shows in out, out
    assert loaded == [], f"tunelab {' '.join(args)} imported {loaded}"


def write_data(folder: Path) -> tuple[Path, Path]:
    jsonl = folder / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"instruction": f"Say {w}", "output": w}) + "\n" for w in ("hi", "bye", "yes")))
    csv = folder / "intents.csv"
    csv.write_text("text,label\nhello there,greet\nbye now,leave\nhi,greet\n")
    return jsonl, csv


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (["config-schema"], '"title": "RunConfig"'),
        (["docs-config"], "# Config reference"),
        (["serve-key", "ci"], "key (shown once): "),
        (["jobs", "list"], ""),
        (["data", "check", "{jsonl}"], "3 records"),
        (["data", "inspect", "{csv}"], "3 records"),
    ],
)
def test_light_verbs_load_no_model_library(tmp_path: Path, args: list[str], shows: str) -> None:
    jsonl, csv = write_data(tmp_path)
    args = [a.format(jsonl=jsonl, csv=csv) for a in args]
    code, loaded, out = probe(args, tmp_path)
    assert code == 0 and shows in out, out
    assert not set(loaded) & set(MODEL_LIBS), f"tunelab {' '.join(args)} imported {loaded}"
