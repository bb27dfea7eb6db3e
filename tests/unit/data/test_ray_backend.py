"""backend: ray: SFT tokenization and the near-duplicate signatures on Ray Data, on a local single-node Ray
cluster this test starts; the results are the local backend's."""

import json
from pathlib import Path

import pytest

import tunelab
from tunelab.config import load_config
from tunelab.data.pipeline import prepare
from tunelab.models.presets import byte_tokenizer
from tunelab.quality.dedup import near_pairs

ray = pytest.importorskip("ray", reason="Ray is an optional dependency: pip install 'ray[data]'")
pytest.importorskip("ray.data", reason="Ray Data is an optional dependency: pip install 'ray[data]'")


@pytest.fixture(scope="module")
def cluster():
    src = str(Path(tunelab.__file__).resolve().parents[1])  # Ray's workers import this tunelab, not an installed one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": src}})  # fmt: skip
    yield
    ray.shutdown()


def test_tokenization_on_ray_equals_local(tmp_path, cluster):
    rows = [{"instruction": f"q{i} " + "x" * (i % 9), "output": f"answer {i} " + "é" * (i % 5)} for i in range(30)]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [f"data.train=[{{path: {p}}}]", "data.eval_ratio=0.2", f"data.cache_dir={tmp_path}"]
    local = prepare(load_config(None, base), byte_tokenizer(), use_cache=False)
    on_ray = prepare(
        load_config(None, [*base, "data.backend=ray", "data.num_proc=2"]), byte_tokenizer(), use_cache=False
    )
    assert [(e.input_ids, e.labels) for e in on_ray.train] == [(e.input_ids, e.labels) for e in local.train]
    assert [(e.input_ids, e.labels) for e in on_ray.eval] == [(e.input_ids, e.labels) for e in local.eval]
    assert on_ray.report() == local.report()


def test_near_duplicates_on_ray_equal_local(cluster):
    texts = [" ".join(f"w{(i * 7 + k) % 97}" for k in range(40)) for i in range(60)]
    texts[50] = texts[5].replace("w", "v", 1)
    assert near_pairs(texts, 0.8, workers=2, backend="ray") == near_pairs(texts, 0.8) != []
