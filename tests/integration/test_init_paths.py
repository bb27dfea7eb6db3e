"""After `tunelab init`, the copied configs name only what is there, as seen from where `init` ran.

Each command in a config's comments works as written: the configs, data and launcher files it names exist; a
run it names (`runs/full`) is written by a `tunelab train` command before it in the same comments. The configs'
own data paths exist too, except data that is not tunelab's to ship, whose comment says where to put it.
The same holds in the repository, from its root, for the packaged configs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.conftest import REPO
from tests.integration.doc_commands import DocCommand, comment_commands, tunelab_args

from tunelab.cli import main
from tunelab.config import load_config

# Data a config names that `init` does not copy -> the folder its comment must tell the user to fill.
NOT_SHIPPED = {"classify_banking77.yaml": "../shared/data/banking77/"}
OUTPUT_OPTIONS = {"-o", "--out", "--output"}  # their value is written by the command
TEXT_OPTIONS = {"--prompt", "-p", "--port", "-m"}  # their value is not a path
PATHLIKE = re.compile(r"/|\.(ya?ml|jsonl?|csv|parquet|txt|py)$")


def run_dir(config: str) -> Path:
    out = load_config(config).output
    return Path(out.dir) / (out.name or f"{Path(config).stem}-TIME")  # unnamed runs get a time stamp


def problems(cmd: DocCommand, runs: set[Path]) -> list[str]:
    """What `cmd` names that is missing; a `train` command adds its run to `runs`."""
    found = []
    for prev, word in zip(("", *cmd.argv), cmd.argv):
        if prev in OUTPUT_OPTIONS | TEXT_OPTIONS or word.startswith("-") or "=" in word:
            continue
        if word.isupper() or "://" in word or not PATHLIKE.search(word):  # CONFIG, URLs, verbs, numbers
            continue
        if word.startswith("runs/"):
            if not any(Path(word) == r or r in Path(word).parents for r in runs):
                found.append(f"{cmd.where}: {word} is not made by a command before it")
        elif not Path(word).exists():
            found.append(f"{cmd.where}: {word} does not exist")
    args = tunelab_args(cmd.argv) or ()
    if args[:1] == ("train",) and len(args) > 1 and Path(args[1]).is_file():
        runs.add(run_dir(args[1]))
    return found


def check_config(path: Path, shown_as: str) -> list[str]:
    text = path.read_text()
    launcher = "compute_environment:" in text  # an accelerate config: only its comments name files
    runs = set() if launcher else {run_dir(str(path))}
    found = [p for cmd in comment_commands(text, shown_as) for p in problems(cmd, runs)]
    if launcher:
        return found
    cfg = load_config(path)
    teacher = cfg.method.distill.teacher
    if teacher and teacher.startswith("runs/") and Path(teacher) not in runs:
        found.append(f"{shown_as}: method.distill.teacher {teacher} is not made by a command in its comments")
    for ds in [*cfg.data.train, *cfg.data.eval, *cfg.eval.data]:
        if not Path(ds.path).exists():
            where = NOT_SHIPPED.get(path.name)
            if where is None or where not in ds.path:
                found.append(f"{shown_as}: data {ds.path} does not exist")
            elif not re.search(rf"#.*{re.escape(where)}", text):
                found.append(f"{shown_as}: no comment says to put {ds.path} in {where}")
    return found


@pytest.mark.parametrize("folder", [".", "proj", "repository"])
def test_commands_in_config_comments_name_what_exists(folder: str, tmp_path: Path, monkeypatch) -> None:
    if folder == "repository":
        monkeypatch.chdir(REPO)
        configs = sorted((REPO / "examples").rglob("*.yaml"))
        shown = [str(p.relative_to(REPO)) for p in configs]
    else:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as done:
            main(["init", folder])
        assert done.value.code == 0
        configs = sorted(Path(folder).rglob("*.yaml"))
        shown = [str(p) for p in configs]
        assert Path(folder, "quickstart.yaml") in configs and Path(folder, "accelerate", "ddp.yaml") in configs
    found = [p for path, name in zip(configs, shown) for p in check_config(path, name)]
    assert not found, "\n".join(found)


def test_the_check_finds_a_missing_path_and_a_run_made_by_no_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    Path("data/a.jsonl").write_text('{"text": "x"}\n')
    Path("a.yaml").write_text(
        "# First:\n#   tunelab train examples/a.yaml\n#   tunelab generate runs/other --prompt hi\n"
        "data: {train: [{path: data/a.jsonl}]}\n"
    )
    found = check_config(Path("a.yaml"), "a.yaml")
    assert found == [
        "a.yaml:2: examples/a.yaml does not exist",
        "a.yaml:3: runs/other is not made by a command before it",
    ]
