"""The fine-tuning heads against `transformers`: export gives BertForSequenceClassification,
BertForTokenClassification and BertForQuestionAnswering with our logits (within 1e-4),
and `+init_from_hf` loads such folders back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from models.bert.config import BertTaskConfig
from models.bert.hf import load_hf_weights
from models.bert.tasks import BertQuestionAnswering, BertSequenceClassifier, BertTokenClassifier
from tests.test_bert_hf import VOCAB, VOCAB_SIZE, random_inputs, randomise
from utils.export_hf import export

TOLERANCE = 1e-4
HEADS = {
    "bert_cls": ("classification", ["neg", "neutral", "pos"], transformers.BertForSequenceClassification),
    "bert_ner": ("token_classification", ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"], transformers.BertForTokenClassification),
    "bert_qa": ("question_answering", [], transformers.BertForQuestionAnswering),
}


def task_config(name: str, **overrides) -> BertTaskConfig:
    values = dict(name=name, num_layers=2, hidden_size=64, num_heads=4, max_position_embeddings=32,
                  hidden_dropout_prob=0.0, attention_dropout_prob=0.0)
    return BertTaskConfig(**{**values, **overrides})


def task_model(name: str, num_labels: int, seed: int = 0):
    config = task_config(name)
    if name == "bert_qa":
        model = BertQuestionAnswering(config, VOCAB_SIZE)
    else:
        model = (BertSequenceClassifier if name == "bert_cls" else BertTokenClassifier)(config, VOCAB_SIZE, num_labels)
    randomise(model.eval(), seed)
    return model


def write_task_checkpoint(folder: Path, model, task: str, labels: list[str]) -> Path:
    """A checkpoint folder as a fine-tuning run writes it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"arch": model.config.model_dump()}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "dataset.json").write_text(json.dumps({"task": task, "labels": labels, "vocab_size": VOCAB_SIZE, "pad_id": 0}))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


@pytest.mark.parametrize("name", sorted(HEADS))
def test_export_gives_the_transformers_class_with_our_logits(tmp_path, name):
    task, labels, hf_class = HEADS[name]
    model = task_model(name, len(labels))
    output = export(write_task_checkpoint(tmp_path / "ckpt", model, task, labels), tmp_path / "hf")
    theirs, info = hf_class.from_pretrained(output, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    theirs.eval()
    input_ids, token_type_ids, attention_mask = random_inputs(seed=1)
    with torch.no_grad():
        ours = model.logits(input_ids, token_type_ids, attention_mask)
        hf_out = theirs(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    if name == "bert_qa":
        torch.testing.assert_close(hf_out.start_logits[real], ours[0][real], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(hf_out.end_logits[real], ours[1][real], atol=TOLERANCE, rtol=0)
    elif name == "bert_ner":
        torch.testing.assert_close(hf_out.logits[real], ours[real], atol=TOLERANCE, rtol=0)
        assert theirs.config.id2label[1] == "B-LOC"
    else:
        torch.testing.assert_close(hf_out.logits, ours, atol=TOLERANCE, rtol=0)
        assert theirs.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_the_train_step_gives_the_logits_of_the_padded_model(name):
    """The unpadded step (real tokens only) and `logits` (padded) agree."""
    _, labels, _ = HEADS[name]
    model = task_model(name, len(labels))
    input_ids, token_type_ids, attention_mask = random_inputs(seed=2)
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask.bool(),
             "row_index": torch.arange(3)}
    if name == "bert_cls":
        batch["labels"] = torch.tensor([0, 2, 1])
    elif name == "bert_ner":
        batch["labels"] = torch.where(attention_mask.bool(), input_ids % 5, -100)
    else:
        batch["start_positions"], batch["end_positions"] = torch.tensor([0, 2, 1]), torch.tensor([0, 3, 2])
    with torch.no_grad():
        out = model({}, batch)
        reference = model.logits(input_ids, token_type_ids, attention_mask)
    real = attention_mask.bool()
    if name == "bert_cls":
        torch.testing.assert_close(out.outputs["logits"], reference, atol=1e-5, rtol=0)
        expected = torch.nn.functional.cross_entropy(reference, batch["labels"], reduction="sum")
    elif name == "bert_ner":
        assert torch.equal(out.outputs["predictions"][real], reference.argmax(-1)[real])
        expected = torch.nn.functional.cross_entropy(reference[real], batch["labels"][real], reduction="sum")
    else:
        torch.testing.assert_close(out.outputs["start_logits"][real], reference[0][real], atol=1e-5, rtol=0)
        start = reference[0].masked_fill(~real, float("-inf"))
        end = reference[1].masked_fill(~real, float("-inf"))
        ce = torch.nn.functional.cross_entropy
        expected = (ce(start, batch["start_positions"], reduction="sum") + ce(end, batch["end_positions"], reduction="sum")) / 2
    torch.testing.assert_close(out.losses["loss"][0], expected, atol=1e-4, rtol=1e-5)


def test_init_from_hf_loads_a_sequence_classifier_folder(tmp_path):
    model = task_model("bert_cls", 3)
    export(write_task_checkpoint(tmp_path / "ckpt", model, "classification", ["a", "b", "c"]), tmp_path / "hf")
    again = BertSequenceClassifier(task_config("bert_cls"), VOCAB_SIZE, 3)
    report = load_hf_weights(again, tmp_path / "hf")
    assert report.missing == [] and report.unused == []
    for (name, ours), theirs in zip(model.state_dict().items(), again.state_dict().values()):
        rows = VOCAB_SIZE if name == "embeddings.word_embeddings.weight" else None  # padded rows are not exported
        assert torch.equal(ours[:rows], theirs[:rows]), name


def test_init_from_hf_of_a_masked_lm_reports_the_fresh_head_and_the_dropped_mlm_head(tmp_path):
    hf_config = transformers.BertConfig(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=256, max_position_embeddings=32)
    transformers.BertForPreTraining(hf_config).save_pretrained(tmp_path / "hf")
    model = BertTokenClassifier(task_config("bert_ner"), VOCAB_SIZE, 5)
    report = load_hf_weights(model, tmp_path / "hf")
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert {"cls.predictions.transform.dense.weight", "cls.seq_relationship.weight", "bert.pooler.dense.weight"} <= {
        name if name.startswith("cls.") else f"bert.{name}" for name in report.unused}
