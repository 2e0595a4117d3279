"""Export a BERT training checkpoint as a Hugging Face `transformers` model folder.

    python -m utils.export_hf --checkpoint checkpoints/PROJECT/RUN/step_1000 --output-dir my-bert
    python utils/export_hf.py --checkpoint CKPT --output-dir DIR --weights raw --overwrite

The output holds `config.json`, `model.safetensors` and the tokenizer files, and loads with
`transformers.BertForMaskedLM.from_pretrained(DIR)` (`BertForPreTraining` when NSP was
trained; `BertForSequenceClassification`, `BertForTokenClassification` or
`BertForQuestionAnswering` for a run of `arch=bert_cls`, `bert_ner` or `bert_qa`, with the
dataset's label names) and `AutoTokenizer.from_pretrained(DIR)`. The EMA weights are exported when the
checkpoint has them, unless `--weights raw`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from core.cli import argument_parser
from core.errors import UserError, run_cli
from core.files import atomic_folder, write_json
from models.bert.config import TASK_ARCHS, BertConfig, BertTaskConfig
from models.bert.hf import HF_TASK_CLASSES, hf_config_dict, to_hf_state_dict, to_hf_task_state_dict
from training.checkpoint import resolve_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
"""Files copied from the checkpoint's `tokenizer/` folder when present."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argument_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder written by pretrain.py")
    parser.add_argument("--output-dir", required=True, help="folder to create for the transformers model")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default=None, help="which weights to export (default: ema when saved)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    return parser.parse_args(argv)


def _read_json(path: Path, what: str) -> dict:
    """A JSON file of the checkpoint; a missing one is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"{path} not found: is {path.parent} a checkpoint folder written by pretrain.py? ({what})")
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def read_bert_config(checkpoint: Path) -> BertConfig:
    """The `arch` section of the checkpoint's run config, which must be a BERT (or a BERT
    with a fine-tuning head)."""
    run_config = _read_json(checkpoint / "config.json", "run config")
    arch = run_config.get("arch")
    name = arch.get("name") if isinstance(arch, dict) else None
    if name != "bert" and name not in TASK_ARCHS:
        known = ", ".join(("bert", *TASK_ARCHS))
        raise UserError(f"{checkpoint} holds a {name!r} model, not BERT; only arch={known} checkpoints can be exported")
    try:
        return (BertTaskConfig if name in TASK_ARCHS else BertConfig).model_validate(arch)
    except ValidationError as error:
        first = error.errors()[0]
        raise UserError(f"{checkpoint}/config.json: arch.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def weights_file(checkpoint: Path, weights: str | None) -> Path:
    """`ema.safetensors` (preferred when present) or `model.safetensors`, as asked."""
    ema, raw = checkpoint / "ema.safetensors", checkpoint / "model.safetensors"
    if weights == "ema" and not ema.is_file():
        raise UserError(f"{ema} not found: this run kept no EMA weights; pass --weights raw")
    chosen = raw if weights == "raw" or (weights is None and not ema.is_file()) else ema
    if not chosen.is_file():
        raise UserError(f"{chosen} not found: is {checkpoint} a checkpoint folder written by pretrain.py?")
    return chosen


def copy_tokenizer(checkpoint: Path, output: Path) -> list[str]:
    """Copy the tokenizer files; AutoTokenizer needs tokenizer.json or vocab.txt."""
    folder = checkpoint / "tokenizer"
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if "tokenizer.json" not in present and "vocab.txt" not in present:
        raise UserError(f"{folder} has no tokenizer.json or vocab.txt; the checkpoint lacks its tokenizer")
    for name in present:
        shutil.copy2(folder / name, output / name)
    return present


def export(checkpoint: Path, output_dir: Path, weights: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hugging Face folder for `checkpoint` (a step folder, or a run folder for
    its newest checkpoint) at `output_dir` (atomically)."""
    if not checkpoint.is_dir():
        raise UserError(f"checkpoint folder {checkpoint} not found")
    if not (checkpoint / "model.safetensors").is_file():
        # A run folder: export its newest complete checkpoint.
        checkpoint = resolve_checkpoint(str(checkpoint), None)
    config = read_bert_config(checkpoint)
    dataset = _read_json(checkpoint / "dataset.json", "dataset metadata")
    missing = [key for key in ("vocab_size", "pad_id") if key not in dataset]
    if missing:
        raise UserError(f"{checkpoint}/dataset.json lacks {missing}; is it the metadata of an MLM dataset?")
    vocab_size = config.resolved_vocab_size(dataset["vocab_size"])
    state = load_file(weights_file(checkpoint, weights))
    if isinstance(config, BertTaskConfig):
        hf_state = to_hf_task_state_dict(state, config, vocab_size)
        hf_config = {**hf_config_dict(config, vocab_size, dataset["pad_id"], [HF_TASK_CLASSES[config.name]]),
                     **task_fields(config, dataset)}
    else:
        with_nsp = config.loss.use_nsp
        hf_state = to_hf_state_dict(state, config, vocab_size, with_nsp)
        architecture = "BertForPreTraining" if with_nsp else "BertForMaskedLM"
        hf_config = hf_config_dict(config, vocab_size, dataset["pad_id"], [architecture])
    with atomic_folder(output_dir, overwrite=overwrite) as folder:
        write_json(folder / "config.json", hf_config)
        save_file(hf_state, folder / "model.safetensors", metadata={"format": "pt"})
        copy_tokenizer(checkpoint, folder)
    return output_dir


def task_fields(config: BertTaskConfig, dataset: dict) -> dict:
    """`config.json` keys of a fine-tuning head: label names (so the outputs say what they
    are), the regression problem type, the classifier dropout."""
    task = dataset.get("task")
    labels = dataset.get("labels") or []
    if config.name == "bert_qa":
        names = ["start", "end"]
    elif task == "regression":
        names = ["score"]
    else:
        names = labels
    fields = {"id2label": {str(i): name for i, name in enumerate(names)},
              "label2id": {name: i for i, name in enumerate(names)},
              "classifier_dropout": config.classifier_dropout}
    if task == "regression":
        fields["problem_type"] = "regression"
    elif task == "classification":
        fields["problem_type"] = "single_label_classification"
    return fields


def main(argv: list[str] | None = None) -> None:
    """Parse flags, export, report."""
    args = parse_args(argv)
    output = export(Path(args.checkpoint), Path(args.output_dir), args.weights, args.overwrite)
    print(f"wrote {output}: load it with transformers' from_pretrained('{output}')")


if __name__ == "__main__":
    run_cli(main)
