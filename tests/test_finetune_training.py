"""Fine-tuning through the training loop: +init_from reports what it loaded, a classifier
learns, writes its predictions, evaluates a saved run, exports, and 1 vs 2 processes
give the same losses."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file

from dataset import build_text_cls_dataset, build_text_mlm_dataset
from models.registry import get_arch
from pretrain import launch
from tests.helpers import (
    TINY_BERT,
    compose_config,
    make_cls_files,
    make_mlm_dataset,
    run_builder,
    run_one_and_two_processes,
    step_values,
)
from training.checkpoint import find_latest
from training.config import PretrainConfig, validate
from training.init_from import starting_point
from training.metrics import read_metrics
from utils.export_hf import export


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny NSP-pretrained BERT checkpoint and a classification dataset with its vocabulary."""
    root = tmp_path_factory.mktemp("finetune")
    make_mlm_dataset(root / "plain-mlm")
    assert run_builder(build_text_mlm_dataset.main, "--input-files", root / "plain-mlm.txt", "--output-dir", root / "mlm",
                       "--tokenizer", root / "plain-mlm" / "tokenizer", "--max-seq-length", 32, "--nsp") == 0
    launch(compose_config(TINY_BERT + [f"data_paths=[{root / 'mlm'}]", f"+checkpoint_path={root / 'pre'}",
                                       "global_batch_size=8", "max_steps=2", "arch.loss.use_nsp=true"]))
    train, dev = make_cls_files(root / "files")
    assert run_builder(build_text_cls_dataset.main, "--train-files", train, "--validation-files", dev,
                       "--tokenizer", root / "mlm" / "tokenizer", "--max-seq-length", 16, "--output-dir", root / "cls") == 0
    return root


FINETUNE = ["arch=bert_cls", "wandb=disabled", "log_interval=1", "global_batch_size=8", "lr=2e-3"]


def test_init_from_loads_the_encoder_drops_the_pretraining_heads_and_reports_them(pretrained, capsys):
    raw = compose_config(FINETUNE + [f"data_paths=[{pretrained / 'cls'}]", f"+init_from={pretrained / 'pre'}"])
    config = validate(PretrainConfig, raw)
    plugin = get_arch("bert_cls")
    arch_config = validate(plugin.config_class, config.arch)
    metadata = __import__("dataset.tasks.format", fromlist=["x"]).load_task_metadata(config.data_paths)
    start = starting_point(config.init_from, plugin, arch_config, metadata)
    assert start.folder == find_latest(pretrained / "pre")
    assert (start.arch_config.num_layers, start.arch_config.hidden_size, start.arch_config.num_heads) == (1, 32, 2)
    torch.manual_seed(0)
    model = plugin.build(start.arch_config, metadata)
    report = start.load(model)
    saved = load_file(start.folder / "model.safetensors")
    assert sorted(report.fresh) == ["classifier.bias", "classifier.weight"]
    assert sorted(report.dropped) == sorted(name for name in saved if name.startswith(("mlm_head.", "nsp_head.")))
    assert "pooler.weight" in report.loaded and len(report.loaded) == len(model.state_dict()) - 2
    for name in report.loaded:
        assert torch.equal(model.state_dict()[name], saved[name]), name
    # The run prints the same report in its banner.
    launch(compose_config(FINETUNE + [f"data_paths=[{pretrained / 'cls'}]", f"+init_from={pretrained / 'pre'}",
                                      f"+checkpoint_path={pretrained / 'banner'}", "max_steps=1"]))
    banner = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("initialised from"))
    assert "fresh: classifier.weight, classifier.bias" in banner and "dropped: mlm_head.bias" in banner
    assert f"{len(report.loaded)} tensors loaded" in banner


def test_a_classifier_learns_writes_predictions_evaluates_and_exports(pretrained, tmp_path):
    run = tmp_path / "run"
    launch(compose_config(FINETUNE + [f"data_paths=[{pretrained / 'cls'}]", f"+init_from={pretrained / 'pre'}",
                                      f"+checkpoint_path={run}", "epochs=20", "eval_interval=20", "lr=5e-3"]))
    records = read_metrics(run)
    config = __import__("json").loads((run / "config.json").read_text())
    assert config["lr_warmup_steps"] == 16  # 10% of 20 epochs x 8 steps
    final = [r for r in records if "dev/accuracy" in r][-1]
    assert {"dev/f1", "dev/mcc", "dev/loss"} <= set(final)
    assert final["dev/accuracy"] >= 0.9, final  # "contains cat" is learnable from the words alone
    predictions = (run / "predictions" / "dev.tsv").read_text().splitlines()
    assert predictions[0] == "index\tprediction" and len(predictions) == 25 and predictions[1].split("\t")[1] in "01"
    # eval_only on the fine-tuned checkpoint gives the same scores.
    launch(compose_config(FINETUNE + [f"data_paths=[{pretrained / 'cls'}]", f"+init_from={pretrained / 'pre'}",
                                      f"+load_checkpoint={run}", "eval_only=true"]))
    again = [r for r in read_metrics(run) if "dev/accuracy" in r][-1]
    assert again["dev/accuracy"] == final["dev/accuracy"] and again["dev/mcc"] == pytest.approx(final["dev/mcc"])
    hf = transformers.BertForSequenceClassification.from_pretrained(export(run, tmp_path / "hf")).eval()
    assert hf.config.id2label == {0: "0", 1: "1"}


@pytest.mark.multiprocess
def test_two_processes_fine_tune_like_one(pretrained, tmp_path):
    args = FINETUNE + [f"data_paths=[{pretrained / 'cls'}]", f"+init_from={pretrained / 'pre'}", "epochs=1",
                       "eval_interval=1", "arch.hidden_dropout_prob=0.0", "arch.attention_dropout_prob=0.0"]
    one_dir, two_dir = run_one_and_two_processes(args, tmp_path, port=29523)
    one, two = step_values(read_metrics(one_dir), "train/loss"), step_values(read_metrics(two_dir), "train/loss")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step
    eval_one = [r for r in read_metrics(one_dir) if "dev/accuracy" in r][-1]
    eval_two = [r for r in read_metrics(two_dir) if "dev/accuracy" in r][-1]
    assert eval_two["dev/accuracy"] == eval_one["dev/accuracy"]
    assert eval_two["dev/loss"] == pytest.approx(eval_one["dev/loss"], rel=1e-4)
    assert (tmp_path / "two" / "predictions" / "dev.tsv").read_text() == (tmp_path / "one" / "predictions" / "dev.tsv").read_text()
