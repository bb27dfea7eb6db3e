"""Every command README.md and docs/*.md show runs on a tiny model and exits 0, or with its documented error.

The commands are read from the docs themselves (doc_commands.py: shell fences, and inline `tunelab ...` spans
that are commands rather than mentions), so a new command in a doc is covered without a new test. They run in
a sandbox where the files and runs they name exist (SANDBOX: built once, through the CLI), a fresh copy per
fence, the fence's lines in order as a user walks them. `tunelab` commands run in-process through
`tunelab.cli.main` (the console script's code; one import of torch instead of one per command); `serve`,
`studio` and `accelerate launch` run as real processes. What does not run here is in the tables below, with the reason;
a table entry that names no documented command fails the test, so the tables cannot go stale.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from tests.conftest import REPO, SHARED
from tests.integration.doc_commands import DocCommand, fenced_blocks, inline_commands, is_mention, tunelab_args

from tunelab.cli import app, main
from tunelab.serve.review import ReviewQueue
from tunelab.serve.store import Store

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# ------------------------------------------------------------------------------------------ sandbox recipes


@dataclass(frozen=True)
class Init:
    folder: str  # `tunelab init FOLDER`

    def make(self, dest: Path) -> None:
        expect_ok(run_tunelab(("init", self.folder)))


@dataclass(frozen=True)
class Head:
    src: str
    lines: int  # first N records: the same data, less time

    def make(self, dest: Path) -> None:
        dest.write_text("".join(Path(self.src).read_text().splitlines(keepends=True)[: self.lines]))


@dataclass(frozen=True)
class Edit:
    src: str
    old: str
    new: str

    def make(self, dest: Path) -> None:
        text = Path(self.src).read_text()
        assert self.old in text, (self.src, self.old)
        dest.write_text(text.replace(self.old, self.new))


@dataclass(frozen=True)
class Copy:
    src: str

    def make(self, dest: Path) -> None:
        shutil.copytree(self.src, dest)


@dataclass(frozen=True)
class Train:
    config: str
    overrides: tuple[str, ...] = ()

    def make(self, dest: Path) -> None:
        expect_ok(run_tunelab(("train", self.config, *self.overrides, *EXTRA["train"])))


@dataclass(frozen=True)
class DocFence:
    doc: str
    heading: str  # the first fence after this heading

    def make(self, dest: Path) -> None:
        text = (REPO / self.doc).read_text()
        after = text[text.index(self.heading) :]
        dest.write_text(after.split("```", 2)[1].split("\n", 1)[1])


@dataclass(frozen=True)
class FeedbackStore:
    """A serve store (SQLite) as a server writes it: answered requests for the task's test split, users' ratings
    and corrections, and review decisions (half approved, half edited with the correction; the rest unreviewed)."""

    src: str
    n: int

    def make(self, dest: Path) -> None:
        store = Store(f"sqlite:///{dest.resolve()}")
        queue = ReviewQueue(store)
        for i, line in enumerate(Path(self.src).read_text().splitlines()[: self.n]):
            msgs = json.loads(line)["messages"]
            right, rid = msgs[2]["content"], f"req-{i}"
            wrong = json.loads(right) | {"priority": "normal" if '"high"' in right else "high"}
            answer = right if i % 2 else json.dumps(wrong)
            store.log_request(rid, api_key_id="alice", endpoint="/v1/chat/completions", model="support",
                              adapter="support", request={"messages": msgs[:2]}, response_text=answer,
                              finish_reason="stop", prompt_tokens=40, completion_tokens=20, latency_ms=50.0,
                              status=200, decisions=[])  # fmt: skip
            store.add_feedback(rid, 1 if answer == right else -1, None if answer == right else right, None)
            if i < self.n * 2 // 3:
                queue.decide(rid, "approve" if answer == right else "edit", "ana", None if answer == right else right)
        store.close()


# ---------------------------------------------------------------------------------------------- the tables

# Placeholder words in commands -> a sandbox name (a word ending in "/" replaces a path prefix).
PLACEHOLDERS = {"CONFIG": "my.yaml", "DIR": "base-model-folder", "S": "0", "../shared/": f"{SHARED}/"}

# Words the test adds to a verb's commands, and why.
EXTRA = {
    "train": ["train.max_steps=2"],  # full training takes minutes; two steps run the same path, save and evaluate
    "quickstart": ["--epochs", "0.2"],  # a fifth of an epoch: the whole lifecycle, a fifth of the training time
    "serve": ["--port", "FREE_PORT"],  # the default 8000 may be taken on a shared machine
    "studio": ["--port", "FREE_PORT"],
    "tune": ["tune.trials=3"],  # three trials run the same search, pruning and best-vs-default path as six
}

# Commands that do not run here -> why.
SKIP = {
    "cd runs/my-run/exports/gguf-q4_0 && ollama create my-model -f Modelfile && ollama run my-model": (
        "needs Ollama (not installed here); tests/unit/export/test_modelfile.py renders the Modelfile's template"
    ),
    "accelerate launch --config_file examples/accelerate/ddp.yaml -m tunelab.cli train CONFIG": "needs CUDA GPUs",
    "accelerate launch --config_file examples/accelerate/fsdp.yaml -m tunelab.cli train CONFIG": (
        "8 processes (num_processes: 8); tests/unit/train/test_sharded.py runs this config with 2 CPU processes"
    ),
    "accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml -m tunelab.cli train CONFIG": (
        "8 processes and deepspeed; tests/unit/train/test_deepspeed_cpu.py runs this config with 2 CPU processes"
    ),
    "tunelab train CONFIG [a.b=c ...] [--resume]": "a synopsis; its concrete forms follow it in training.md",
    "tunelab tune examples/tune.yaml tune.storage=postgresql+psycopg://tunelab@db-host/tunelab --worker": (
        "needs a PostgreSQL server that several machines reach; tests/integration/test_tune_cli.py runs two "
        "processes on one SQLite study"
    ),
}

# Programs other than tunelab in shell fences -> why they are not run.
OTHER_PROGRAMS = {
    "make": "Makefile targets (make setup, make test): CI runs them on a fresh machine",
    "python3": "scripts/gpu_check.py, for a lent GPU machine; tests/unit/test_gpu_check.py runs its CPU mode",
}

# Shell lines the test performs itself -> what it does.
SHELL = {"echo alice <sha256> >> keys.txt": "appends the keys-file line that `tunelab serve-key alice` printed"}

# Commands that run only under `-m slow` -> why.
SLOW = {
    ".venv/bin/tunelab quickstart": "trains, evaluates 200 examples twice, a forgetting check: ~3 min on 2 cores",
    "tunelab quickstart --model DIR": "the quickstart lifecycle again, with LoRA on a model folder",
    "accelerate launch --config_file examples/accelerate/multi_cpu.yaml -m tunelab.cli train examples/sft-lora.yaml": (
        "two training processes"
    ),
}

# Commands whose documented outcome is an error -> (exit status, text in the output), and where it is documented.
EXPECTED = {
    # data-quality.md: banking77's test split repeats 7 training texts (leakage); `check` exits 1 on errors.
    "tunelab data check ../shared/data/banking77/train.csv --test ../shared/data/banking77/test.csv": (
        1,
        "[error] leak_exact: 7 test records",
    ),
    # data.md: a file whose fields fit no format gets the likely format and mapping.
    "tunelab data check reviews.csv": (
        1,
        "did you mean `format: labelled, columns: {text: sentence, label: sentiment}`?",
    ),
    # export.md: K-quants need llama.cpp's tools (not installed here: the documented "not found" message).
    "tunelab export runs/my-run --format gguf --gguf-type q4_k_m --llama-cpp ~/llama.cpp": (
        2,
        "needs llama.cpp's llama-quantize, which was not found",
    ),
    # feedback-loop.md: production prompts of the quickstart task against a run trained on tiny_sft: drift, exit 1.
    "tunelab drift --store serve.db --against runs/my-run": (1, "**DRIFT**"),
    # export.md: the export is written and verified, then the upload fails offline (tests run with HF_HUB_OFFLINE).
    "tunelab export runs/my-run --format gguf --gguf-type q8_0 --push me/my-model-gguf": (
        2,
        "The export itself is complete",
    ),
}

# stdin for interactive verbs; the input then ends, like Ctrl-D.
STDIN = {"chat": "hello\n/reset\nhello\n/help\n", "feedback": "c\na\nr\ns\n"}  # feedback review: one line a decision

# Commands that run in a new empty folder instead of the sandbox -> why.
EMPTY_FOLDER = {"tunelab init": "init refuses to overwrite; the sandbox was itself made by it"}


# Documented name -> what the sandbox holds under it, built in this order.
SANDBOX: list[tuple[str, Any]] = [
    (".", Init(".")),  # README: `tunelab init` copies the example configs and the quickstart data here
    ("examples", Init("examples")),  # the repository's examples/: the same files
    ("my.yaml", Edit("sft-lora.yaml", "name: sft-lora", "name: my-run")),  # LoRA SFT of the tiny preset
    ("train.jsonl", Head("data/train.jsonl", 200)),  # the quickstart task's splits, written by init
    ("eval.jsonl", Head("data/eval.jsonl", 50)),
    ("all.jsonl", Head("data/train.jsonl", 200)),
    ("test.jsonl", Head("data/test.jsonl", 8)),
    ("prompts.jsonl", Head("examples/data/parity_prompts.jsonl", 2)),
    ("runs/my-run", Train("my.yaml")),  # a LoRA run with checkpoints
    ("runs/other-run", Copy("runs/my-run")),  # adapters over the same base
    ("runs/support-lora", Copy("runs/my-run")),
    ("runs/big", Train("full.yaml", ("output.name=big",))),  # a full fine-tune: methods.md's teacher
    ("base-model-folder", Copy("runs/big/final")),  # a plain model folder
    ("serve.yaml", DocFence("docs/serving.md", "## serve.yaml")),  # serving.md's own example
    ("news.tsv", DocFence("docs/data.md", "**A TSV, two columns made into one text.**")),  # data.md's real-data files
    ("ner.conll", DocFence("docs/data.md", "**A column file.**")),
    ("hh.jsonl", DocFence("docs/data.md", "**A transcript file.**")),
    ("reviews.csv", DocFence("docs/data.md", "**When a file does not fit**")),
    ("serve.db", FeedbackStore("data/test.jsonl", 24)),  # feedback-loop.md's store: traffic, feedback, reviews
]


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Result:
    cmd: DocCommand
    status: str  # "ran", "expected error", "skipped: why", "FAILED: why"
    output: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")


def run_tunelab(args: tuple[str, ...], stdin: str = "") -> tuple[int, str]:
    """`tunelab ARGS` in this process: exit status and stdout+stderr."""
    out, old_stdin = io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(out):
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue()


def expect_ok(done: tuple[int, str]) -> None:
    assert done[0] == 0, done[1][-3000:]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")


def substitute(words: tuple[str, ...]) -> tuple[str, ...]:
    def one(word: str) -> str:
        key, eq, value = word.rpartition("=")
        if eq and value in PLACEHOLDERS:
            return key + eq + PLACEHOLDERS[value]
        for name, real in PLACEHOLDERS.items():
            if word == name or (name.endswith("/") and word.startswith(name)):
                return real + word[len(name) :]
        return word

    return tuple(one(w) for w in words)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args: tuple[str, ...], key: str | None) -> tuple[int, str]:
    """Start the server, wait until it answers, list its models (with the block's key), stop it."""
    port = free_port()
    args = tuple(str(port) if a == "FREE_PORT" else a for a in args)
    cmd = [sys.executable, "-m", "tunelab", *args]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"} if key else {}
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        models = httpx.get(f"{url}/v1/models", headers=headers, timeout=10) if proc.poll() is None else None
    finally:
        proc.terminate()
        log = proc.communicate(timeout=60)[0]
    if models is None or models.status_code != 200:
        return 1, log + (models.text if models is not None else "(the server stopped before it answered)")
    ids = {m["id"] for m in models.json()["data"]}
    wanted = {a.split("=", 1)[0] for prev, a in zip(args, args[1:]) if prev in ("--adapter", "-a")}
    return (0 if wanted <= ids else 1), f"serving {sorted(ids)}\n{log}"


def accelerate(argv: tuple[str, ...]) -> tuple[int, str]:
    cmd = [str(Path(sys.executable).parent / "accelerate"), *argv[1:]]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def why_not(cmd: DocCommand) -> str | None:
    if cmd.text in SKIP:
        return SKIP[cmd.text]
    if SHARED.name in " ".join(substitute(cmd.argv)) and not SHARED.exists():
        return f"{SHARED} not present (real data lives in ../shared beside the checkout)"
    return None


def run_one(cmd: DocCommand, state: dict[str, str]) -> Result:
    if (reason := why_not(cmd)) is not None:
        return Result(cmd, f"skipped: {reason}")
    if cmd.text in SHELL:
        with open("keys.txt", "a") as f:
            f.write(state["keys line"] + "\n")
        return Result(cmd, "ran (by the test: " + SHELL[cmd.text] + ")")
    args = tunelab_args(cmd.argv)
    if args is None:
        why = OTHER_PROGRAMS.get(cmd.program)
        if why:
            return Result(cmd, f"skipped: {why}")
        return Result(cmd, f"FAILED: {cmd.program} is not a tunelab command; add it to OTHER_PROGRAMS with why")
    args = substitute(args) + tuple(EXTRA.get(args[0], []) if args else [])
    if cmd.program == "accelerate":
        code, out = accelerate(substitute(cmd.argv[: cmd.argv.index("-m") + 2]) + args)
    elif args[:1] in (("serve",), ("studio",)):  # servers: started, asked for their models, stopped
        code, out = serve(args, state.get("key"))
    elif cmd.text in EMPTY_FOLDER:
        Path("empty").mkdir()
        os.chdir("empty")
        try:
            code, out = run_tunelab(args)
        finally:
            os.chdir("..")
    else:
        code, out = run_tunelab(args, STDIN.get(args[0], "") if args else "")
    if args[:1] == ("serve-key",) and code == 0:
        state["key"] = out.split("key (shown once):")[1].split()[0]
        state["keys line"] = out.split("keys file line:")[1].strip().splitlines()[0]
    want_code, want_text = EXPECTED.get(cmd.text, (0, ""))
    if code != want_code or want_text not in out:
        return Result(
            cmd, f"FAILED: exit {code}, expected {want_code}" + (f" and {want_text!r}" if want_text else ""), out
        )
    return Result(cmd, "expected error" if want_code else "ran", out)


def run_unit(commands: list[DocCommand]) -> list[Result]:
    """Run a fence's commands in order in the current folder; one failure does not hide the next."""
    state: dict[str, str] = {}
    results = []
    for cmd in commands:
        start = time.perf_counter()
        results.append(run_one(cmd, state))
        results[-1].seconds = time.perf_counter() - start
    return results


def report(results: list[Result]) -> str:
    lines = [f"{r.cmd.where}  {r.cmd.text}\n    -> {r.status} ({r.seconds:.1f} s)" for r in results]
    failed = [f"--- {r.cmd.where} {r.cmd.text}\n{r.output[-2500:]}" for r in results if r.failed]
    return "\n".join(lines + failed)


# ------------------------------------------------------------------------------------------ collecting


def units(markdown: str, name: str) -> list[list[DocCommand]]:
    """Each shell fence with commands, then each inline command on its own."""
    root = typer.main.get_command(app)
    inline = [[c] for c in inline_commands(markdown, name) if not is_mention(root, c)]
    return [b for b in fenced_blocks(markdown, name) if b] + inline


def documented() -> list[list[DocCommand]]:
    return [u for doc in DOCS for u in units(doc.read_text(), str(doc.relative_to(REPO)))]


def params() -> list[Any]:
    out = []
    for unit in documented():
        slow = [pytest.mark.slow] if any(c.text in SLOW for c in unit) else []
        out.append(pytest.param(unit, marks=slow, id=unit[0].where))
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs-sandbox")
    home = tmp_path_factory.mktemp("docs-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("TUNELAB_HOME", str(home / ".tunelab"))
        mp.setenv("HF_HOME", str(home / "hf"))
        mp.chdir(root)
        for name, recipe in SANDBOX:
            recipe.make(Path(name))
    return root


@pytest.fixture
def in_sandbox(sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the sandbox as the current folder."""
    work = tmp_path / "sandbox"
    shutil.copytree(sandbox, work, symlinks=True)
    monkeypatch.chdir(work)
    return work


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("unit", params())
def test_documented_commands_run(unit: list[DocCommand], in_sandbox: Path) -> None:
    results = run_unit(unit)
    print(report(results))
    assert not any(r.failed for r in results), report(results)


def test_every_table_entry_names_a_documented_command() -> None:
    texts = {c.text for unit in documented() for c in unit}
    for table in (SKIP, SHELL, SLOW, EXPECTED, EMPTY_FOLDER):
        assert set(table) <= texts, f"not in any doc: {set(table) - texts}"
    assert set(EXPECTED) <= set(SLOW) | texts


def test_a_broken_command_in_a_doc_fails(in_sandbox: Path) -> None:
    """The parser finds fenced lines and inline commands (not mentions), and a broken one is reported failed."""
    doc = (
        "Try:\n\n```bash\ntunelab validate my.yaml   # works\ntunelab validate missing.yaml\nfrobnicate --all\n```\n"
        "```yaml\ntunelab: not a command\n```\n"
        "The check, `tunelab data check`, and `tunelab train CONFIG\n--resume` (wrapped).\n"
    )
    found = units(doc, "fake.md")
    assert [[c.text for c in u] for u in found] == [
        ["tunelab validate my.yaml", "tunelab validate missing.yaml", "frobnicate --all"],
        ["tunelab train CONFIG --resume"],
    ]
    assert [c.where for c in found[0]] == ["fake.md:4", "fake.md:5", "fake.md:6"]
    results = run_unit(found[0])
    assert [r.status.split(":")[0] for r in results] == ["ran", "FAILED", "FAILED"], report(results)
    assert "config file not found" in results[1].output
