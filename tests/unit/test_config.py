"""Config: typed, frozen, unknown keys with did-you-mean and the YAML line, overrides, schema, docs current."""

import pydantic
import pytest
from tests.conftest import REPO

from tunelab.cli.docs import config_reference
from tunelab.config import RunConfig, config_schema, dump_config, load_config
from tunelab.errors import ConfigError

GOOD = "model:\n  name_or_path: tiny\ntrain:\n  lr: 0.001\n  batch_size: 4\n"


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_loads_and_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.train.lr == 0.001 and cfg.tuning.mode == "lora"
    with pytest.raises(pydantic.ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_unknown_key_has_did_you_mean_and_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD + "  learning_rate: 3\n  batchsize: 2\n"))
    msg = str(e.value)
    assert "run.yaml:7: unknown key 'train.batchsize' (did you mean 'batch_size'?)" in msg
    assert "run.yaml:6: unknown key 'train.learning_rate'" in msg


def test_unknown_section_and_nested_list_key(tmp_path):
    msg = str(pytest.raises(ConfigError, load_config, write(tmp_path, "trian:\n  lr: 1\n")).value)
    assert "unknown key 'trian' (did you mean 'train'?)" in msg
    text = "data:\n  train:\n    - path: a.jsonl\n      fromat: alpaca\n"
    msg = str(pytest.raises(ConfigError, load_config, write(tmp_path, text)).value)
    assert "run.yaml:4: unknown key 'data.train.0.fromat' (did you mean 'format'?)" in msg


def test_wrong_type(tmp_path):
    msg = str(pytest.raises(ConfigError, load_config, write(tmp_path, "train:\n  lr: fast\n")).value)
    assert "run.yaml:2: train.lr:" in msg and "'fast'" in msg


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(
        write(tmp_path, GOOD), ["train.lr=1e-4", "data.packing=true", "tuning.lora.target_modules=[q_proj, v_proj]"]
    )
    assert cfg.train.lr == 1e-4 and cfg.data.packing is True
    assert cfg.tuning.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_data_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    cfg = load_config(write(tmp_path, "data:\n  train:\n    - path: d.jsonl\n"))
    assert cfg.data.train[0].path == str(tmp_path / "d.jsonl")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["train.epochs=2"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_every_field_has_a_description():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            sub = f.annotation
            for cand in (sub, *getattr(sub, "__args__", ())):
                if isinstance(cand, type) and issubclass(cand, pydantic.BaseModel):
                    walk(cand)

    walk(RunConfig)
    assert "properties" in config_schema()


def test_config_reference_doc_is_current():
    doc = REPO / "docs" / "config-reference.md"
    assert doc.read_text() == config_reference(), "docs/config-reference.md is stale: run `make docs`"


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        ("dpo", "beta: 0.2", "method.beta moved: write method.dpo.beta (or method.simpo/orpo/kto.beta)"),
        ("kto", "beta: 0.2", "method.beta moved: write method.kto.beta (or method.dpo/simpo/orpo.beta)"),
        ("sft", "loss_type: sigmoid", "method.loss_type moved: write method.dpo.loss_type"),
        ("simpo", "gamma: 1.0", "method.gamma moved: write method.simpo.gamma"),
        ("grpo", "beta: 0.1", "method.beta: grpo's KL weight is method.grpo.kl_beta"),
    ],
)
def test_round_one_flat_method_keys_name_their_new_place(tmp_path, method, key, expected):
    text = GOOD.replace("train:", f"method:\n  name: {method}\n  {key}\ntrain:", 1)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert expected in str(e.value)
