"""GRPO's pieces: group advantages and the loss (value, gradient and KL) against hand computations,
sampling, prompt data, and each reward source: functions (built-in or a file), a reward model on a tiny
saved model scored against a hand rendering, an LLM judge on a real HTTP server, their weighted sum and
how missing verdicts are filled; the `reward` eval metric and its config. The CLI runs are in
tests/integration/test_grpo_cli.py."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from tests.unit.scoring.test_judge import server  # noqa: F401 (the scripted judge on 127.0.0.1, a fixture)

from tunelab.config import JudgeConfig, RewardSource, eval_settings, load_config
from tunelab.data.collate import collate
from tunelab.data.prompts import collate_prompts, prepare_prompts, question_text
from tunelab.data.records import Message
from tunelab.data.tokenize import Example
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.methods.base import frozen_copy
from tunelab.methods.grpo import advantages, grpo_losses, sample
from tunelab.methods.reward import reward_model_from
from tunelab.models.presets import build_preset
from tunelab.scoring.rewards import REWARDS, ModelSource, Rewards, fill_missing, load_reward, reward_metric

EXS = [Example([1, 5, 6, 7, 8], [-100, -100, 6, 7, 8]), Example([1, 9, 10], [-100, -100, 10])]


def _token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[list[torch.Tensor]]:
    logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    return [[logp[i, t - 1, ex.labels[t]] for t in range(1, len(ex.labels)) if ex.labels[t] != -100]
            for i, ex in enumerate(EXS)]  # fmt: skip


def test_advantages_by_hand() -> None:
    r = [[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]]
    got = advantages(torch.tensor(r))
    for g, row in enumerate(r):
        mean, std = statistics.mean(row), statistics.stdev(row)  # torch.std is the sample std, like stdev
        assert got[g].tolist() == pytest.approx([(x - mean) / (std + 1e-4) for x in row], abs=1e-6)


def test_loss_value_and_gradient_by_hand() -> None:
    model, _ = build_preset("tiny", seed=9)
    model.eval()
    batch, adv = collate(EXS, 0), torch.tensor([0.7, -1.3])
    per_seq, kl = grpo_losses(model, batch, adv, beta=0.5, ref=frozen_copy(model))
    assert per_seq.tolist() == pytest.approx([-0.7, 1.3], abs=1e-6)  # ratio 1 and KL 0: the value is -A
    assert kl.tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    per_seq.sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # by hand: the gradient of sum_i -A_i * mean_t log p(token t of completion i)
    want = sum(-float(adv[i]) * torch.stack(toks).mean() for i, toks in enumerate(_token_logps(model, batch)))
    want.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_kl_k3_by_hand_against_another_reference() -> None:
    model, _ = build_preset("tiny", seed=9)
    ref, _ = build_preset("tiny", seed=10)
    model.eval(), ref.eval()
    batch, adv, beta = collate(EXS, 0), torch.tensor([0.7, -1.3]), 0.5
    with torch.no_grad():
        per_seq, kl = grpo_losses(model, batch, adv, beta, ref=ref)
        pol, rf = _token_logps(model, batch), _token_logps(ref, batch)
    for i in range(2):
        k3 = [math.exp(r - p) - (r - p) - 1 for p, r in zip(map(float, pol[i]), map(float, rf[i]))]
        assert float(kl[i]) == pytest.approx(statistics.mean(k3), rel=1e-4)
        assert float(per_seq[i]) == pytest.approx(-float(adv[i]) + beta * statistics.mean(k3), rel=1e-4)


def test_sample_groups_completions_by_prompt_and_cuts_at_eos() -> None:
    torch.manual_seed(0)
    model, tok = build_preset("tiny", seed=3)
    model.train()
    from tunelab.data.prompts import PromptItem

    items = [PromptItem([1, 60, 61], "a", 0), PromptItem([1, 62], "b", 1)]
    batch = collate_prompts(items, tok.pad_token_id)
    assert batch["prompt_ids"][1].tolist() == [tok.pad_token_id, 1, 62]  # left-padded
    exs, texts = sample(model, tok, batch, 3, 6, 1.0)
    assert model.training  # back in train mode after sampling in eval mode
    assert len(exs) == len(texts) == 6
    for i, ex in enumerate(exs):
        prompt = items[i // 3].input_ids
        comp = ex.input_ids[len(prompt) :]
        assert ex.input_ids[: len(prompt)] == prompt and ex.labels == [-100] * len(prompt) + comp
        assert 1 <= len(comp) <= 6 and tok.eos_token_id not in comp[:-1]
        assert texts[i] == tok.decode(comp, skip_special_tokens=True)
    greedy, _ = sample(model, tok, batch, 1, 6, 0.0)
    assert greedy == sample(model, tok, batch, 1, 6, 0.0)[0]  # deterministic


# --------------------------------------------------------------------------- prompt data


def _cfg(tmp_path: Path, rows: list, fmt: str = "auto", *more: str):  # noqa: ANN202
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(None, [f"data.train=[{{path: {path}, format: {fmt}}}]", "method.name=grpo",
                              "method.grpo.rewards=[{function: parity}]", "method.grpo.max_new_tokens=8",
                              "data.max_length=64", *more])  # fmt: skip


def test_prompt_rows_messages_and_other_records(tmp_path: Path) -> None:
    _, tok = build_preset("tiny")
    rows = [{"prompt": "Give an even number"},
            {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Give an odd one"}]},
            {"prompt": "x" * 100}]  # fmt: skip
    prep = prepare_prompts(_cfg(tmp_path, rows), tok)
    assert [it.index for it in prep.train] == [0, 1, 2] and prep.stats[0].truncated == 1
    by_len = sorted(prep.train, key=lambda it: it.length)
    first = by_len[0]
    assert first.prompt == (Message("user", "Give an even number"),)
    text = tok.apply_chat_template([{"role": "user", "content": "Give an even number"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    assert first.input_ids == tok(text, add_special_tokens=False).input_ids  # as the model sees it at inference
    longest = by_len[-1]
    assert longest.length == 56 and longest.input_ids[0] == tok.bos_token_id  # 64 - 8 new tokens, BOS kept
    assert question_text(by_len[1].prompt) == "system: S\nuser: Give an odd one"
    # other records give their prompt side: a conversation's turns before its last reply
    conv = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    assert prepare_prompts(_cfg(tmp_path, conv), tok).train[0].prompt == (Message("user", "hi"),)


def test_prompt_data_errors_name_file_and_line(tmp_path: Path) -> None:
    _, tok = build_preset("tiny")
    with pytest.raises(DataError, match=r"prompts.jsonl, line 1.*method grpo needs a prompt; Text records"):
        prepare_prompts(_cfg(tmp_path, [{"text": "raw"}]), tok)
    with pytest.raises(DataError, match=r"prompts.jsonl, line 2, field \"prompt\": missing required field"):
        prepare_prompts(_cfg(tmp_path, [{"prompt": "ok"}, {"question": "no prompt"}], "prompt"), tok)
    with pytest.raises(DataError, match=r"line 1: cannot detect the format"):
        prepare_prompts(_cfg(tmp_path, [{"question": "no prompt"}]), tok)
    with pytest.raises(DataError, match="ends where the model answers"):
        prepare_prompts(_cfg(tmp_path, [{"prompt": [{"role": "assistant", "content": "a"}]}], "prompt"), tok)


def test_bad_reward_specs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least one reward source"):
        load_config(None, ["method.name=grpo"])
    with pytest.raises(ConfigError, match=r"rewards.0.*exactly one of function, model, judge"):
        load_config(None, ["method.name=grpo", "method.grpo.rewards=[{function: parity, model: x}]"])
    with pytest.raises(ConfigError, match="kl_beta"):
        load_config(None, ["method.name=grpo", "method.beta=0.1", "method.grpo.rewards=[{function: parity}]"])
    with pytest.raises(TunelabError, match="expected one of parity, number or a path to a .py file"):
        Rewards([RewardSource(function="parityy")])
    with pytest.raises(TunelabError, match="expected a folder with config.json"):
        Rewards([RewardSource(model=str(tmp_path))])
    with pytest.raises(TunelabError, match="reward sources: two named 'parity'"):
        Rewards([RewardSource(function="parity"), RewardSource(function="parity", weight=2)])


def test_reward_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf" / "rm").mkdir(parents=True)
    (tmp_path / "conf" / "r.py").write_text("def reward(prompt, completion):\n    return 1.0\n")
    (tmp_path / "conf" / "c.yaml").write_text(
        "method: {name: grpo, grpo: {rewards: [{function: r.py}, {model: rm}, {function: parity}]}}\n"
    )
    rewards = load_config(tmp_path / "conf" / "c.yaml").method.grpo.rewards
    assert [r.function or r.model for r in rewards] == [str(tmp_path / "conf" / "r.py"), str(tmp_path / "conf" / "rm"),
                                                        "parity"]  # fmt: skip


# --------------------------------------------------------------------------- reward sources


def test_reward_registry_and_file(tmp_path: Path) -> None:
    assert REWARDS["parity"]("give an even number", "24 7") == pytest.approx(2 / 3)
    assert REWARDS["parity"]("give an even number", "2²") == pytest.approx(1 / 2)  # "²".isdigit() but no int
    f = tmp_path / "my_reward.py"
    f.write_text("def reward(prompt, completion):\n    return float(len(completion))\n")
    assert load_reward(str(f))("p", "abc") == 3.0
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(TunelabError, match="must define a function reward"):
        load_reward(str(tmp_path / "bad.py"))
    with pytest.raises(TunelabError, match="parity"):
        load_reward("my_module.reward")  # dotted names are never imported
    (tmp_path / "div.py").write_text("def reward(prompt, completion):\n    return 1 / len(completion)\n")
    with pytest.raises(TunelabError, match=r"'.*div.py' raised ZeroDivisionError: division by zero \(prompt 'p', "
                                           r"completion ''\)"):  # fmt: skip
        Rewards([RewardSource(function=str(tmp_path / "div.py"))])(["p"], [""], 1, torch.device("cpu"))
    (tmp_path / "nan.py").write_text("def reward(prompt, completion):\n    return float('nan')\n")
    with pytest.raises(TunelabError, match="returned nan.*expected a finite number"):
        Rewards([RewardSource(function=str(tmp_path / "nan.py"))])(["p"] * 2, ["a", "b"], 2, torch.device("cpu"))


def test_weighted_sum_and_missing_scores_filled_by_group_mean(tmp_path: Path) -> None:
    f = tmp_path / "length.py"
    f.write_text("def reward(prompt, completion):\n    return float(len(completion))\n")
    rewards = Rewards([RewardSource(function="parity", weight=2.0), RewardSource(function=str(f), weight=0.5)])
    prompts = ["Give an even number"] * 2 + ["Give an odd number"] * 2
    total, metrics = rewards(prompts, ["2", "ab", "13", "2x"], 2, torch.device("cpu"))
    parity, length = [1.0, 0.0, 1.0, 0.0], [1.0, 2.0, 2.0, 2.0]
    want = [2 * p + 0.5 * n for p, n in zip(parity, length)]
    assert total.shape == (2, 2) and total.flatten().tolist() == pytest.approx(want)
    assert float(metrics["reward"]) == pytest.approx(sum(want))
    assert float(metrics["reward/parity"]) == 2.0 and float(metrics["reward/length"]) == 7.0
    nan = float("nan")
    filled = fill_missing(torch.tensor([[1.0, nan, 0.0], [nan, nan, nan]]))
    assert filled.tolist() == [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]


def _saved_reward_model(tmp_path: Path) -> Path:
    causal, tok = build_preset("tiny", seed=4)
    rm = reward_model_from(causal, tok.pad_token_id)
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.score.weight, std=0.5)  # a zero head would score everything 0
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_reward_model_scores_equal_a_hand_rendering(tmp_path: Path) -> None:
    folder = _saved_reward_model(tmp_path)
    source = ModelSource(str(folder), batch_size=3)
    prompts = [(Message("user", "Give an even number"),), (Message("user", "hi"),), "raw prompt: "]
    comps = ["24", "a much longer completion than the others", "7"]
    got, _ = source(prompts * 2, comps * 2, torch.device("cpu"))  # 6 rows in padded batches of 3
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    want = []
    for p, c in zip(prompts, comps):  # one unpadded sequence at a time, rendered by hand
        if isinstance(p, str):
            ids = tok(p + c + tok.eos_token).input_ids
        else:
            msgs = [{"role": m.role, "content": m.content} for m in p] + [{"role": "assistant", "content": c}]
            ids = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False).input_ids
        with torch.no_grad():
            want.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    assert len(set(want)) == 3  # the scores differ, so the comparison means something
    assert got == pytest.approx(want * 2, abs=1e-5)
    (tmp_path / "run").mkdir()  # a run directory of `method: reward` works too: its final/
    folder.rename(tmp_path / "run" / "final")
    (tmp_path / "run" / "config.yaml").write_text("method: {name: reward}\n")
    assert ModelSource(str(tmp_path / "run"))(prompts, comps, torch.device("cpu"))[0] == pytest.approx(want, abs=1e-5)


def test_judge_source_maps_scores_and_counts_failures(server, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    judge = JudgeConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key_env=None, timeout=0.5,
                        max_retries=0, cache_path=str(tmp_path / "judge.sqlite"))  # fmt: skip
    rewards = Rewards([RewardSource(judge=judge)])
    comps = ["correct", "wrong", "MALFORMED", "SLOW", "SLOW", "MALFORMED"]  # scripted: 9, 2, no verdict, timeout
    total, metrics = rewards(["q"] * 6, comps, 3, torch.device("cpu"))
    hi, lo = (9 - 1) / 9, (2 - 1) / 9  # score s in [1, 10] -> (s - 1) / 9
    assert total.flatten().tolist() == pytest.approx([hi, lo, (hi + lo) / 2, 0.0, 0.0, 0.0])
    assert float(metrics["judge/unparseable"]) == 2 and float(metrics["judge/failed"]) == 2
    assert float(metrics["reward"]) == pytest.approx(hi + lo + (hi + lo) / 2)
    asked = [r["body"]["messages"][1]["content"] for r in server.requests]
    assert any("[Question]\nq" in a and "[Answer]\ncorrect" in a for a in asked)
    n = len(server.requests)
    Rewards([RewardSource(judge=judge)])(["q"] * 2, ["correct", "wrong"], 2, torch.device("cpu"))
    assert len(server.requests) == n  # both verdicts came from the SQLite cache


# --------------------------------------------------------------------------- the reward eval metric


def test_reward_metric_sums_sources_per_output_and_leaves_missing_out(server, tmp_path: Path) -> None:  # noqa: F811
    judge = JudgeConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key_env=None, max_retries=0,
                        cache_path=str(tmp_path / "judge.sqlite"))  # fmt: skip
    specs = [RewardSource(function="parity", weight=2.0), RewardSource(judge=judge, name="j")]
    prompts = [[{"role": "user", "content": "Give an even number"}], "Give an odd number", "Give an odd number"]
    r = reward_metric(specs, prompts, ["24 correct", "2", "MALFORMED"], torch.device("cpu"))  # scripted: 9, 2, none
    parity = [2 / 9, 0.0, 0.0]  # share of non-space characters that are digits of the asked parity
    judged = [(9 - 1) / 9, (2 - 1) / 9, math.nan]
    assert r.per_example["reward/parity"] == pytest.approx(parity)
    assert r.per_example["reward/j"][:2] == pytest.approx(judged[:2]) and math.isnan(r.per_example["reward/j"][2])
    want = [2 * p + j for p, j in zip(parity[:2], judged[:2])]
    assert r.per_example["reward"][:2] == pytest.approx(want) and math.isnan(r.per_example["reward"][2])
    assert r.scores["reward"] == pytest.approx(sum(want) / 2)  # the unjudged output is left out of the mean
    assert r.details["missing"] == 1 and r.details["judge/unparseable"] == 1
    asked = [q["body"]["messages"][1]["content"] for q in server.requests]
    assert any("[Question]\nGive an even number" in a for a in asked)  # a chat prompt is shown by its content


def test_reward_metric_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval.metrics reward: no reward sources; set eval.rewards"):
        load_config(None, ["eval.metrics=[reward]"])
    with pytest.raises(ConfigError, match="no reward sources"):
        load_config(None, ["data.eval=[{path: x.jsonl, metrics: [reward]}]"])
    grpo = load_config(None, ["method.name=grpo", "method.grpo.rewards=[{function: parity}]", "eval.metrics=[reward]"])
    assert [r.function for r in eval_settings(grpo).rewards] == ["parity"]  # a grpo run scores with its own
    (tmp_path / "r.py").write_text("def reward(prompt, completion):\n    return 1.0\n")
    (tmp_path / "c.yaml").write_text("eval: {metrics: [reward], rewards: [{function: r.py, weight: 2}]}\n")
    own = load_config(tmp_path / "c.yaml")
    assert [r.function for r in eval_settings(own).rewards] == [str(tmp_path / "r.py")]  # relative to the file
