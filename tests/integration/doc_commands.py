"""The shell commands the documentation shows, as argument lists: read from the docs, never listed by hand.

Markdown: every line of a ```bash / ```sh / ```shell / ```console fence, and every inline code span that starts
with `tunelab `. YAML: comment lines whose text is a command (`#   tunelab train ...`). Used by
test_documented_commands.py (each command runs) and test_init_paths.py (each path a copied config names exists).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

SHELL_FENCES = {"bash", "sh", "shell", "console"}
TUNELAB = ("tunelab", ".venv/bin/tunelab")


@dataclass(frozen=True)
class DocCommand:
    where: str  # "README.md:81"
    text: str  # as written, without its trailing comment
    argv: tuple[str, ...]
    fenced: bool  # in a shell fence (else an inline span or a YAML comment)

    @property
    def program(self) -> str:
        return self.argv[0]


def command(where: str, text: str, fenced: bool) -> DocCommand | None:
    """The words of `text` (its `# comment` dropped); `text` of the result is those words joined by spaces."""
    words = shlex.split(text, comments=True)
    return DocCommand(where, " ".join(words), tuple(words), fenced) if words else None


def fenced_blocks(markdown: str, name: str) -> list[list[DocCommand]]:
    """The commands of each shell fence, one list per fence, in order; `\\` continuations joined."""
    blocks: list[list[DocCommand]] = []
    state = None  # None outside fences, "shell" inside a shell fence, "other" inside any other fence
    pending, start = "", 0
    for i, line in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"\s*```\s*(\S*)", line)
        if fence:
            if state is None:
                state = "shell" if fence.group(1) in SHELL_FENCES else "other"
                if state == "shell":
                    blocks.append([])
            else:
                state = None
            continue
        if state != "shell":
            continue
        text = line.strip().removeprefix("$ ")
        start = start if pending else i
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        cmd = command(f"{name}:{start}", pending + text, fenced=True)
        pending = ""
        if cmd:
            blocks[-1].append(cmd)
    return blocks


def inline_commands(markdown: str, name: str) -> list[DocCommand]:
    """Inline code spans outside fences that start with `tunelab ` (a span may wrap onto the next line)."""
    lines = markdown.splitlines()
    inside = False
    for i, line in enumerate(lines):  # blank out fences, keeping line numbers
        if re.match(r"\s*```", line):
            inside, lines[i] = not inside, ""
        elif inside:
            lines[i] = ""
    text = "\n".join(lines)
    found = []
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).replace("\\|", "|").split())
        if span.startswith(TUNELAB[0] + " "):
            cmd = command(f"{name}:{text.count(chr(10), 0, m.start()) + 1}", span, fenced=False)
            if cmd:
                found.append(cmd)
    return found


def comment_commands(yaml_text: str, name: str) -> list[DocCommand]:
    """Commands in YAML comments: indented command lines (`#   tunelab train ...`, `#   accelerate launch ...`)
    and code spans that start with `tunelab ` inside a comment."""
    found = []
    for i, line in enumerate(yaml_text.splitlines(), 1):
        _, hash_, comment = line.partition("#")
        line_cmd = re.match(r"\s{2,}((?:tunelab|accelerate launch) .*)", comment) if hash_ else None
        texts = [line_cmd.group(1).strip().removesuffix("&")] if line_cmd else []
        texts += [m.group(1) for m in re.finditer(r"`(tunelab [^`]+)`", comment)]
        found += [c for t in texts if (c := command(f"{name}:{i}", t, fenced=False))]
    return found


def tunelab_args(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The arguments after the program for `tunelab`, `.venv/bin/tunelab`, `python -m tunelab` and
    `accelerate launch ... -m tunelab.cli`; None for any other program."""
    if argv[0] in TUNELAB:
        return argv[1:]
    if argv[0] in ("python", "python3") and argv[1:3] == ("-m", "tunelab"):
        return argv[3:]
    if argv[:2] == ("accelerate", "launch") and "-m" in argv:
        i = argv.index("-m")
        return argv[i + 2 :] if argv[i + 1] in ("tunelab", "tunelab.cli") else None
    return None


def resolve(root: Any, args: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    """The (sub)command or group that `args` name, from the CLI's click tree, and the arguments after its name.
    (typer ships its own copy of click, so groups are told apart by their `commands`.)"""
    cmd, i = root, 0
    while hasattr(cmd, "commands") and i < len(args) and args[i] in cmd.commands:
        cmd, i = cmd.commands[args[i]], i + 1
    return (cmd if i else None), args[i:]


def is_mention(root: Any, cmd: DocCommand) -> bool:
    """An inline span that only names a group, or a command that needs arguments (`tunelab data check` in
    prose): a reference, not a command to run. Fenced lines are always commands."""
    args = tunelab_args(cmd.argv)
    if cmd.fenced or args is None:
        return False
    target, rest = resolve(root, args)
    if target is None or rest:
        return False
    return hasattr(target, "commands") or any(p.required for p in target.params)
