"""Conversion between `Bert` weights and Hugging Face `transformers` BERT checkpoints.

Export gives a folder that stock `BertForMaskedLM` (or `BertForPreTraining` when NSP was
trained) loads without missing or unexpected weights; import reads such folders, bare
`BertModel` checkpoints (e.g. sentence-transformers' all-MiniLM-L6-v2) and old ones with
LayerNorm `gamma`/`beta` names.

One table (`_name_pairs`) maps every parameter of ours to its Hugging Face name without
the `bert.` prefix; both directions use it. Two parameters need more than a rename: the
fused QKV weight splits into query, key and value along dim 0, and the word embeddings
and decoder bias lose (export) or gain (import) the padded vocabulary rows. The decoder
weight is tied to the word embeddings, so it is never written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from core.errors import UserError
from models.bert.config import BertConfig
from models.bert.model import BertEncoder
from models.interface import strip_compile_prefix

QKV_PARTS = ("query", "key", "value")
"""Order of the three blocks of the fused QKV weight."""

VOCAB_ROWS = ("embeddings.word_embeddings.weight", "mlm_head.bias")
"""Our parameters whose first dimension is the padded vocabulary."""


def _name_pairs(num_layers: int, with_nsp: bool) -> dict[str, str]:
    """Our parameter name -> Hugging Face name without `bert.` (QKV weights excluded)."""
    pairs = {
        "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.norm.bias": "embeddings.LayerNorm.bias",
        "mlm_head.transform.weight": "cls.predictions.transform.dense.weight",
        "mlm_head.transform.bias": "cls.predictions.transform.dense.bias",
        "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm_head.bias": "cls.predictions.bias",
    }
    layer_parts = {
        "attention.out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(num_layers):
        for ours, theirs in layer_parts.items():
            for kind in ("weight", "bias"):
                pairs[f"layers.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
    if with_nsp:
        for kind in ("weight", "bias"):
            pairs[f"pooler.{kind}"] = f"pooler.dense.{kind}"
            pairs[f"nsp_head.{kind}"] = f"cls.seq_relationship.{kind}"
    return pairs


def _qkv_names(layer: int, kind: str) -> tuple[str, list[str]]:
    """(our fused name, the three Hugging Face names without `bert.`) of one layer."""
    ours = f"layers.{layer}.attention.qkv.{kind}"
    return ours, [f"encoder.layer.{layer}.attention.self.{part}.{kind}" for part in QKV_PARTS]


TASK_HEADS = {
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
    "qa_outputs.weight": "qa_outputs.weight",
    "qa_outputs.bias": "qa_outputs.bias",
}
"""The fine-tuning heads (`models.bert.tasks`), named as in `transformers`."""

HF_TASK_CLASSES = {
    "bert_cls": "BertForSequenceClassification",
    "bert_ner": "BertForTokenClassification",
    "bert_qa": "BertForQuestionAnswering",
}
"""The `transformers` class of each fine-tuning architecture."""


def _with_bert_prefix(name: str) -> str:
    """Full Hugging Face name: everything but the heads lives under `bert.`."""
    return name if name.startswith(("cls.", "classifier.", "qa_outputs.")) else f"bert.{name}"


def _all_name_pairs(num_layers: int) -> dict[str, str]:
    """Every parameter name any of our BERT models may have -> its Hugging Face name
    without `bert.` (QKV weights excluded)."""
    return {**_name_pairs(num_layers, with_nsp=True), **TASK_HEADS}


# ---- export ------------------------------------------------------------------------------


def to_hf_state_dict(
    model_state: dict[str, torch.Tensor], config: BertConfig, vocab_size: int, with_nsp: bool
) -> dict[str, torch.Tensor]:
    """Our state dict -> `BertForMaskedLM` (or, `with_nsp`, `BertForPreTraining`) tensors.

    Splits QKV, drops the padded vocabulary rows and omits the tied decoder weight. Every
    tensor is a fresh contiguous copy (safetensors refuses tensors that share memory).
    """
    state = strip_compile_prefix(model_state)
    pairs = _name_pairs(config.num_layers, with_nsp)
    expected = set(pairs) | {_qkv_names(i, k)[0] for i in range(config.num_layers) for k in ("weight", "bias")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(
            f"checkpoint weights do not match arch (num_layers={config.num_layers}, use_nsp={with_nsp}): "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    rows = state["embeddings.word_embeddings.weight"].shape[0]
    if rows != config.padded_vocab_size(vocab_size):
        raise UserError(
            f"checkpoint has {rows} word-embedding rows, but vocab_size {vocab_size} padded to a multiple of "
            f"{config.pad_vocab_to_multiple} gives {config.padded_vocab_size(vocab_size)}; check arch.vocab_size"
        )
    hf_state = {}
    for ours, theirs in pairs.items():
        tensor = state[ours]
        if ours in VOCAB_ROWS:
            tensor = tensor[:vocab_size]
        hf_state[_with_bert_prefix(theirs)] = tensor
    for layer in range(config.num_layers):
        for kind in ("weight", "bias"):
            ours, names = _qkv_names(layer, kind)
            for name, part in zip(names, state[ours].chunk(3, dim=0)):  # 3 x (H, ...)
                hf_state[_with_bert_prefix(name)] = part
    return {name: tensor.detach().clone().contiguous() for name, tensor in hf_state.items()}


def to_hf_task_state_dict(
    model_state: dict[str, torch.Tensor], config: BertConfig, vocab_size: int
) -> dict[str, torch.Tensor]:
    """A fine-tuned model's state dict -> tensors of its `transformers` class (`HF_TASK_CLASSES`):
    QKV split, the padded vocabulary rows dropped, names prefixed as `transformers` has them."""
    state = strip_compile_prefix(model_state)
    pairs = _all_name_pairs(config.num_layers)
    hf_state = {}
    for layer in range(config.num_layers):
        for kind in ("weight", "bias"):
            ours, names = _qkv_names(layer, kind)
            if ours not in state:
                raise UserError(f"checkpoint weights do not match arch (num_layers={config.num_layers}): missing {ours}")
            for name, part in zip(names, state.pop(ours).chunk(3, dim=0)):  # 3 x (H, ...)
                hf_state[_with_bert_prefix(name)] = part
    unknown = sorted(set(state) - set(pairs))
    if unknown:
        raise UserError(f"checkpoint has weights no transformers BERT head has: {unknown[:3]}")
    for ours, tensor in state.items():
        if ours in VOCAB_ROWS:
            tensor = tensor[:vocab_size]
        hf_state[_with_bert_prefix(pairs[ours])] = tensor
    return {name: tensor.detach().clone().contiguous() for name, tensor in hf_state.items()}


def hf_config_dict(config: BertConfig, vocab_size: int, pad_token_id: int, architectures: list[str]) -> dict:
    """The `config.json` of a Hugging Face BERT with our sizes."""
    return {
        "model_type": "bert",
        "architectures": list(architectures),
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",  # the exact erf form, as our layers use
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_dropout_prob,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


# ---- import ------------------------------------------------------------------------------


@dataclass
class HfLoadReport:
    """What `load_hf_weights` did, in our parameter names (and the checkpoint's for `unused`)."""

    loaded: list[str] = field(default_factory=list)
    """Parameters set from the checkpoint."""
    missing: list[str] = field(default_factory=list)
    """Parameters the checkpoint lacks; they keep their current (for a new model: fresh) values."""
    unused: list[str] = field(default_factory=list)
    """Checkpoint tensors that the model has no place for (e.g. a pooler without NSP)."""


def _read_hf_config(hf_dir: str | os.PathLike) -> dict:
    """`config.json` of a Hugging Face BERT folder, checked to be a BERT we can represent."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found: point at a folder saved by transformers' save_pretrained")
    with open(path, encoding="utf-8") as file:
        hf = json.load(file)
    if hf.get("model_type") != "bert":
        raise UserError(f"{path} has model_type {hf.get('model_type')!r}; only 'bert' checkpoints can be loaded")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{path} uses hidden_act {hf['hidden_act']!r}; this BERT implements only 'gelu' (erf)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{path} uses {hf['position_embedding_type']!r} positions; only 'absolute' is supported")
    return hf


def config_from_hf(hf_dir: str | os.PathLike, base: BertConfig) -> BertConfig:
    """`base` with sizes, LayerNorm eps, dropouts, init std and vocabulary of a HF BERT folder."""
    hf = _read_hf_config(hf_dir)
    updates = {
        "num_layers": hf["num_hidden_layers"],
        "hidden_size": hf["hidden_size"],
        "num_heads": hf["num_attention_heads"],
        "expansion": hf["intermediate_size"] / hf["hidden_size"],
        "max_position_embeddings": hf["max_position_embeddings"],
        "vocab_size": hf["vocab_size"],
        "type_vocab_size": hf.get("type_vocab_size", 2),
        "hidden_dropout_prob": hf.get("hidden_dropout_prob", 0.1),
        "attention_dropout_prob": hf.get("attention_probs_dropout_prob", 0.1),
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "initializer_range": hf.get("initializer_range", 0.02),
    }
    try:
        return type(base).model_validate({**base.model_dump(), **updates})
    except ValidationError as error:
        raise UserError(f"{hf_dir}/config.json gives an invalid BERT config: {error.errors()[0]['msg']}") from None


def read_hf_tensors(hf_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a HF folder with the `bert.` prefix removed and `gamma`/`beta` renamed."""
    folder = Path(hf_dir)
    if (folder / "model.safetensors").is_file():
        raw = load_file(folder / "model.safetensors", device="cpu")
    elif (folder / "pytorch_model.bin").is_file():
        raw = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(
            f"{folder} has no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)"
        )
    tensors = {}
    for name, tensor in raw.items():
        name = name.removeprefix("bert.")
        if name.endswith(".gamma"):
            name = name.removesuffix(".gamma") + ".weight"
        elif name.endswith(".beta"):
            name = name.removesuffix(".beta") + ".bias"
        tensors[name] = tensor
    return tensors


def _hf_values_for_model(
    tensors: dict[str, torch.Tensor], model: BertEncoder
) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Our name -> (checkpoint tensor, QKV fused, vocabulary unpadded; the checkpoint names
    it came from), for every parameter of `model` the checkpoint has."""
    own = dict(model.named_parameters())
    values = {}
    for ours, theirs in _all_name_pairs(model.config.num_layers).items():
        if ours == "mlm_head.bias" and theirs not in tensors and "cls.predictions.decoder.bias" in tensors:
            theirs = "cls.predictions.decoder.bias"  # some checkpoints store only the tied copy
        if ours in own and theirs in tensors:
            values[ours] = (tensors[theirs], [theirs])
    for layer in range(model.config.num_layers):
        for kind in ("weight", "bias"):
            ours, names = _qkv_names(layer, kind)
            if all(name in tensors for name in names):
                values[ours] = (torch.cat([tensors[name] for name in names], dim=0), names)  # (3H, ...)
    return values


def _check_tied_decoder(tensors: dict[str, torch.Tensor], used: set[str]) -> None:
    """Accept a stored decoder weight only when it equals the word embeddings (tied)."""
    decoder = tensors.get("cls.predictions.decoder.weight")
    if decoder is None:
        return
    if not torch.equal(decoder, tensors.get("embeddings.word_embeddings.weight", torch.empty(0))):
        raise UserError(
            "checkpoint has a decoder weight untied from the word embeddings, which this BERT cannot represent"
        )
    used.add("cls.predictions.decoder.weight")
    if "cls.predictions.decoder.bias" in tensors:
        used.add("cls.predictions.decoder.bias")


@torch.no_grad()
def load_hf_weights(model: BertEncoder, hf_dir: str | os.PathLike) -> HfLoadReport:
    """Copy the weights of a Hugging Face BERT folder into `model`, in place.

    Accepts `bert.`-prefixed or bare names and old `gamma`/`beta` names. Vocabulary tensors
    fill the first rows of our padded tables. Parameters the checkpoint lacks (e.g. the MLM
    head of a sentence-embedding model) keep their current values and are listed in
    `missing`. A shape mismatch is a `UserError`: build the model with `config_from_hf`.
    """
    tensors = read_hf_tensors(hf_dir)
    values = _hf_values_for_model(tensors, model)
    used: set[str] = set()
    if isinstance(getattr(model, "mlm_head", None), torch.nn.Module):
        _check_tied_decoder(tensors, used)
    report = HfLoadReport()
    for name, parameter in model.named_parameters():
        if name not in values:
            report.missing.append(name)
            continue
        value, sources = values[name]
        target = parameter[: model.vocab_size] if name in VOCAB_ROWS else parameter
        if value.shape != target.shape:
            raise UserError(
                f"checkpoint tensor for {name} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)}; build the model from config_from_hf({hf_dir})"
            )
        target.copy_(value.to(target.dtype))
        used.update(sources)
        report.loaded.append(name)
    report.unused = sorted(set(tensors) - used)
    return report
