"""distill (completions): prompts from every SFT-style format, a local teacher and tunelab's own OpenAI-compatible
server (real uvicorn on 127.0.0.1, the official openai client) giving the same replies, failed requests counted
and written out, the run pre-step and its reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.unit.methods.distillkit import TINY_SFT, trained_teacher_run

from tunelab.config import DatasetConfig, RunConfig, TeacherGeneration
from tunelab.data.records import Message
from tunelab.errors import DataError, TunelabError
from tunelab.methods.teacher_data import Teacher, check_failures, distill_dataset, read_prompts, write_teacher_data
from tunelab.models.generate import DecodingConfig, generate
from tunelab.models.loader import load_run
from tunelab.serve.config import ServeConfig
from tunelab.serve.runtime import ServerThread, build_app, build_engine


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------- prompts


def test_read_prompts_from_every_kind_of_record(tmp_path: Path) -> None:
    u, a = Message("user", "Q"), Message("assistant", "A")
    cases = {
        "prompt": ([{"prompt": "Q"}, {"prompt": [{"role": "user", "content": "Q"}]}], [(u,), (u,)]),
        "messages": ([{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                                    {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "old"}]}],
                     [(u, a, Message("user", "Q2"))]),
        "sharegpt": ([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}], [(u,)]),
        "alpaca": ([{"instruction": "Do", "input": "this", "output": "old"}], [(Message("user", "Do\n\nthis"),)]),
        "prompt_completion": ([{"prompt": "Once upon", "completion": "old"}], ["Once upon"]),  # raw text, no chat
        "preference": ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], [(u,)]),
    }  # fmt: skip
    for fmt, (records, expected) in cases.items():
        path = write(tmp_path / f"{fmt}.jsonl", records)
        got = read_prompts(DatasetConfig(path=str(path)))
        assert [p.prompt for p in got] == expected, fmt
        assert [p.source for p in got] == [f"{path}:{i + 1}" for i in range(len(records))]


def test_records_without_a_prompt_are_listed_with_their_lines(tmp_path: Path) -> None:
    text = write(tmp_path / "text.jsonl", [{"text": "just text"}, {"text": "more"}])
    with pytest.raises(DataError) as e:
        read_prompts(DatasetConfig(path=str(text)))
    assert "2 record(s) without a prompt" in str(e.value) and f"{text}, line 2" in str(e.value)
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": 3}])
    with pytest.raises(DataError, match=r"line 2.*prompt"):
        read_prompts(DatasetConfig(path=str(bad)))


# --------------------------------------------------------------------------- teachers


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return trained_teacher_run(tmp_path_factory.mktemp("teacher"))


def serve(run: Path, **limits: int) -> ServerThread:
    cfg = ServeConfig.model_validate({
        "limits": {"burst": 1000, "requests_per_minute": 60000, **limits},
        "guard": {"injection": "off", "pii_input": "off", "pii_output": "off"},
    })  # fmt: skip
    return ServerThread(build_app(build_engine(run, cfg), cfg))


def test_endpoint_and_local_teacher_write_the_same_replies(teacher_run: Path, tmp_path: Path) -> None:
    """Greedy replies of the served teacher (chat and plain completions) equal the local teacher's, which equal
    tunelab.models.generate on the model as load_run gives it; rows are marked with teacher and settings."""
    chat = DatasetConfig(path=str(TINY_SFT), format="alpaca", max_samples=6)
    plain = write(
        tmp_path / "plain.jsonl",
        [{"prompt": "Reverse the word. house", "completion": ""}, {"prompt": "Add 2 and 3.", "completion": ""}],
    )  # raw text: /completions
    gen = TeacherGeneration(max_new_tokens=16, api_key_env=None, max_retries=0)
    with serve(teacher_run) as srv:
        remote = Teacher("base", gen.model_copy(update={"base_url": srv.url + "/v1"}))
        r_chat = distill_dataset(chat, remote, tmp_path / "remote.jsonl")
        distill_dataset(DatasetConfig(path=str(plain)), remote, tmp_path / "remote-plain.jsonl")
    local = Teacher(str(teacher_run), gen)
    distill_dataset(chat, local, tmp_path / "local.jsonl")
    distill_dataset(DatasetConfig(path=str(plain)), local, tmp_path / "local-plain.jsonl")
    assert r_chat["prompts"] == r_chat["written"] == 6 and r_chat["failed"] == 0
    remote_rows, local_rows = rows(tmp_path / "remote.jsonl"), rows(tmp_path / "local.jsonl")
    replies = [r["messages"][-1]["content"] for r in remote_rows]
    assert replies == [r["messages"][-1]["content"] for r in local_rows]
    assert len(set(replies)) > 2  # prompt-dependent: the equality is not "always the same bytes"
    model, tok = load_run(teacher_run)
    prompts = [[{"role": "user", "content": r["messages"][0]["content"]}] for r in local_rows]
    assert replies == generate(model.eval(), tok, prompts, DecodingConfig(max_new_tokens=16), progress=False)
    assert [r["completion"] for r in rows(tmp_path / "remote-plain.jsonl")] == [
        r["completion"] for r in rows(tmp_path / "local-plain.jsonl")
    ]
    first = remote_rows[0]
    assert first["_teacher"] == {"model": "base", "base_url": srv.url + "/v1", "max_new_tokens": 16,
                                 "temperature": 0.0, "top_p": 1.0, "seed": 0}  # fmt: skip
    assert first["_source"] == f"{TINY_SFT}:1" and first["messages"][0]["role"] == "user"
    assert sum(1 for r in remote_rows if r.get("_truncated")) == r_chat["truncated"]


def test_failed_requests_are_counted_written_and_stop_the_run(teacher_run: Path, tmp_path: Path) -> None:
    """The server refuses prompts over 30 tokens (HTTP 400): those prompts go to the failed file with the error,
    the rest are written, and check_failures stops unless max_failed allows that many."""
    data = write(tmp_path / "p.jsonl", [{"prompt": "short"}, {"prompt": "x" * 100}, {"prompt": "tiny"},
                                         {"prompt": "y" * 200}])  # fmt: skip
    with serve(teacher_run, max_prompt_tokens=30) as srv:
        gen = TeacherGeneration(base_url=srv.url + "/v1", api_key_env=None, max_new_tokens=8, concurrency=3)
        report = distill_dataset(DatasetConfig(path=str(data)), Teacher("base", gen), tmp_path / "o.jsonl")
    assert (report["prompts"], report["written"], report["failed"]) == (4, 2, 2)
    assert [r["messages"][0]["content"] for r in rows(tmp_path / "o.jsonl")] == ["short", "tiny"]
    failed = rows(tmp_path / "o.failed.jsonl")
    assert [f["_source"] for f in failed] == [f"{data}:2", f"{data}:4"]
    assert all("BadRequestError" in f["error"] and "at most 30 allowed" in f["error"] for f in failed)
    with pytest.raises(TunelabError) as e:
        check_failures([report], 0.25, "raise max_failed")
    assert "2 of 4 prompts got no reply" in str(e.value) and str(tmp_path / "o.failed.jsonl") in str(e.value)
    check_failures([report], 0.5, "raise max_failed")  # half may fail: no error


def test_unreachable_endpoint_fails_every_prompt_without_raising(tmp_path: Path) -> None:
    from tunelab.serve.runtime import free_port

    data = write(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    gen = TeacherGeneration(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env=None, max_retries=0, timeout=5)
    report = distill_dataset(DatasetConfig(path=str(data)), Teacher("m", gen), tmp_path / "o.jsonl")
    assert (report["written"], report["failed"]) == (0, 2)
    assert all("APIConnectionError" in f["error"] for f in rows(tmp_path / "o.failed.jsonl"))


# --------------------------------------------------------------------------- inside a run


def test_run_prestep_writes_once_and_reuses(teacher_run: Path, tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({
        "model": {"name_or_path": "tiny-1m"},  # another tokenizer than the teacher's: completions mode is for this
        "method": {"name": "distill", "distill": {"teacher": str(teacher_run), "mode": "completions",
                                                  "generation": {"max_new_tokens": 8}}},
        "data": {"train": [{"path": str(TINY_SFT), "format": "alpaca", "max_samples": 4},
                           {"path": str(TINY_SFT), "format": "alpaca", "max_samples": 2, "weight": 2.0}]},
    })  # fmt: skip
    logs: list[str] = []
    folder = tmp_path / "teacher"
    write_teacher_data(cfg, folder, log=logs.append)
    report = json.loads((folder / "report.json").read_text())
    assert [d["written"] for d in report["datasets"]] == [4, 2]
    assert [Path(d["output"]).name for d in report["datasets"]] == ["completions-0.jsonl", "completions-1.jsonl"]
    stamp = (folder / "completions-0.jsonl").stat().st_mtime_ns
    write_teacher_data(cfg, folder, log=logs.append)
    assert "reusing" in logs[-1] and (folder / "completions-0.jsonl").stat().st_mtime_ns == stamp
    d = cfg.method.distill.model_copy(update={"generation": TeacherGeneration(max_new_tokens=4)})
    longer = cfg.model_copy(update={"method": cfg.method.model_copy(update={"distill": d})})
    write_teacher_data(longer, folder, log=logs.append)
    assert "reusing" not in logs[-1] and json.loads((folder / "report.json").read_text())["key"] != report["key"]


def test_run_prestep_stops_on_failures_and_asks_again_next_time(tmp_path: Path) -> None:
    from tunelab.serve.runtime import free_port

    data = write(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    gen = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key_env": None, "max_retries": 0, "timeout": 5}
    cfg = RunConfig.model_validate({
        "method": {"name": "distill", "distill": {"teacher": "m", "mode": "completions", "generation": gen}},
        "data": {"train": [{"path": str(data)}]},
    })  # fmt: skip
    logs: list[str] = []
    with pytest.raises(TunelabError, match="2 of 2 prompts got no reply"):
        write_teacher_data(cfg, tmp_path / "teacher", log=logs.append)
    assert json.loads((tmp_path / "teacher" / "report.json").read_text())["datasets"][0]["failed"] == 2
    with pytest.raises(TunelabError, match="2 of 2 prompts got no reply"):
        write_teacher_data(cfg, tmp_path / "teacher", log=logs.append)
    assert any("asking the teacher again" in line for line in logs)
