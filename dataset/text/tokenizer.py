"""BERT tokenizers for every text builder: train-ready empty ones, reused ones (a
`tokenizer.json`, a BERT `vocab.txt`, or a folder holding one), and the files
`transformers.AutoTokenizer` reads back (`save_tokenizer`).

`TokenizerChoice` wraps a `tokenizers.Tokenizer` so that it never pads or truncates (the
builders pack and pad themselves) and adds `[CLS] A [SEP] (B [SEP])` around its input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from core.errors import UserError
from core.files import write_json

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""Special tokens, in id order for trained vocabularies (ids 0..4)."""


@dataclass
class TokenizerChoice:
    """The tokenizer of the build and what the metadata records about it."""

    tokenizer: Tokenizer
    kind: str
    """`wordpiece`, `whitespace`, or the path it was loaded from."""
    lowercase: bool
    special_ids: dict[str, int] = field(default_factory=dict)
    """Special token -> id."""

    def __post_init__(self):
        # A reused tokenizer.json may pad or truncate (e.g. to 128): either would corrupt the
        # token stream; the builder packs and pads itself.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        for token in SPECIAL_TOKENS:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is None:
                raise UserError(f"tokenizer {self.kind} has no {token} token; BERT needs {' '.join(SPECIAL_TOKENS)}")
            self.special_ids[token] = token_id
        cls_id, sep_id = self.special_ids["[CLS]"], self.special_ids["[SEP]"]
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )


def new_tokenizer(kind: str, lowercase: bool) -> tuple[Tokenizer, type[trainers.Trainer]]:
    """An untrained BERT-style tokenizer (normaliser, pre-tokenizer) of `kind` without vocabulary."""
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        trainer_class = trainers.WordPieceTrainer
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer_class = trainers.WordLevelTrainer
    # strip_accents=None follows `lowercase`, as in BERT's uncased and cased vocabularies.
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer, trainer_class


def load_tokenizer(path: str) -> TokenizerChoice:
    """Reuse a `tokenizer.json`, a BERT `vocab.txt`, or a folder holding one of them."""
    source = Path(path)
    if source.is_dir():
        candidates = [source / "tokenizer.json", source / "vocab.txt"]
        source = next((candidate for candidate in candidates if candidate.is_file()), None)
        if source is None:
            raise UserError(f"--tokenizer folder {path} holds neither tokenizer.json nor vocab.txt")
    elif not source.is_file():
        raise UserError(f"--tokenizer {path} is not 'wordpiece', 'whitespace', or an existing file or folder")
    if source.suffix == ".json":
        try:
            tokenizer = Tokenizer.from_file(str(source))
        except Exception as error:  # the tokenizers library raises plain Exception for bad files
            raise UserError(f"--tokenizer {source} is not a tokenizers JSON file ({error})") from None
        return TokenizerChoice(tokenizer, path, _normalizer_lowercases(json.loads(tokenizer.to_str())["normalizer"]))
    vocab = _read_vocab_txt(source)
    lowercase = _vocab_lowercase(source, vocab)
    tokenizer, _ = new_tokenizer("wordpiece", lowercase)
    tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##")
    return TokenizerChoice(tokenizer, path, lowercase)


def _read_vocab_txt(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as handle:
        tokens = handle.read().splitlines()
    vocab = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    if len(vocab) != len(tokens):
        raise UserError(f"--tokenizer {path} lists some tokens twice; a vocab.txt has one distinct token per line")
    return vocab


def _vocab_lowercase(vocab_file: Path, vocab: dict[str, int]) -> bool:
    """`do_lower_case` of the tokenizer_config.json beside a vocab.txt, else whether it has no capitals."""
    config_file = vocab_file.with_name("tokenizer_config.json")
    if config_file.is_file():
        with open(config_file, encoding="utf-8") as handle:
            config = json.load(handle)
        if "do_lower_case" in config:
            return bool(config["do_lower_case"])
    lowercase = not any(token != token.lower() for token in vocab if token not in SPECIAL_TOKENS)
    print(f"{vocab_file}: no do_lower_case setting beside it; the vocabulary looks {'un' if lowercase else ''}cased")
    return lowercase


def _normalizer_lowercases(spec: dict | None) -> bool:
    """Whether a tokenizer.json normaliser lowercases (BertNormalizer, Lowercase, or a Sequence of them)."""
    if spec is None:
        return False
    if spec["type"] == "Sequence":
        return any(_normalizer_lowercases(inner) for inner in spec["normalizers"])
    return spec["type"] == "Lowercase" or (spec["type"] == "BertNormalizer" and bool(spec.get("lowercase")))


def save_tokenizer(choice: TokenizerChoice, folder: Path, max_seq_length: int) -> str:
    """Write the tokenizer files AutoTokenizer reads; returns the SHA-256 of vocab.txt."""
    folder.mkdir(parents=True)
    choice.tokenizer.save(str(folder / "tokenizer.json"))
    vocab = choice.tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise UserError(f"tokenizer {choice.kind} has gaps in its ids; it cannot be written as a vocab.txt")
    vocab_text = "".join(f"{token}\n" for token in tokens).encode("utf-8")
    (folder / "vocab.txt").write_bytes(vocab_text)
    special_map = {f"{token.strip('[]').lower()}_token": token for token in SPECIAL_TOKENS}
    is_wordpiece = json.loads(choice.tokenizer.to_str())["model"]["type"] == "WordPiece"
    config = {
        "tokenizer_class": "BertTokenizer" if is_wordpiece else "PreTrainedTokenizerFast",
        "do_lower_case": choice.lowercase,
        "model_max_length": max_seq_length,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        **special_map,
    }
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", special_map)
    return hashlib.sha256(vocab_text).hexdigest()


def continuation_mask(tokenizer: Tokenizer) -> np.ndarray:
    """bool [vocab]: which tokens continue a word (start with `##`)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    mask[[index for token, index in vocab.items() if token.startswith("##")]] = True
    return mask


def id_dtype(vocab_size: int) -> type:
    """How token ids are stored: uint16 when every id of the vocabulary fits, else int32."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
