"""LLaMA-Factory's SFT preprocessing of one alpaca JSONL file, timed by bench/data_scale.py (run with the
bench-only venv of bench/setup_llamafactory.sh, never tunelab's).

    python lf_preprocess.py DATA.jsonl MODEL_DIR WORK_DIR [--workers N]

Runs what `llamafactory-cli train` runs before it loads a model: the tokenizer, the template, and `get_dataset`
(JSON -> Arrow through `datasets`, the alpaca converter, the supervised processor: one message pair tokenized at
a time, labels masked to the response), saving the tokenized dataset to WORK_DIR/tokenized (`tokenized_path`).
Template `chatml` (the byte tokenizer's EOS is <|im_end|>), cutoff_len 512 like tunelab's max_length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    data, model, work = Path(sys.argv[1]).resolve(), sys.argv[2], Path(sys.argv[3]).resolve()
    workers = int(sys.argv[sys.argv.index("--workers") + 1]) if "--workers" in sys.argv else None
    work.mkdir(parents=True, exist_ok=True)
    (work / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": str(data)}}))
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    args = dict(stage="sft", do_train=True, model_name_or_path=model, dataset="bench", dataset_dir=str(work),
                template="chatml", cutoff_len=512, output_dir=str(work / "out"), overwrite_cache=True,
                preprocessing_num_workers=workers, tokenized_path=str(work / "tokenized"), report_to="none",
                finetuning_type="lora", use_cpu=True)  # fmt: skip
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    print(json.dumps({"train": len(module["train_dataset"])}))


if __name__ == "__main__":
    main()
