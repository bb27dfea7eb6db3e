"""The floor for the data path in bench/data_scale.py: `datasets.load_dataset("json")` and one batched `map` that
tokenizes each row's instruction, input and output joined (no template, no labels): the least work any
tokenizing preprocessor does on the same file with the same tokenizer.

    python data_floor.py DATA.jsonl MODEL_DIR WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import datasets
    from transformers import AutoTokenizer

    data, model, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(model)
    ds = datasets.load_dataset("json", data_files=data, split="train", cache_dir=str(work / "hf-cache"))

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        texts = [f"{a}\n\n{b}\n{c}" for a, b, c in zip(batch["instruction"], batch["input"], batch["output"])]
        return {"input_ids": tok(texts, add_special_tokens=False)["input_ids"]}

    out = ds.map(encode, batched=True, remove_columns=ds.column_names, load_from_cache_file=False)
    print(json.dumps({"rows": len(out), "tokens": sum(len(x) for x in out["input_ids"][:1000])}))


if __name__ == "__main__":
    main()
