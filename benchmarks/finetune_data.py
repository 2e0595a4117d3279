"""Small labelled fine-tuning files made offline from the two corpora of `../shared/corpora`,
for the fine-tuning guide (BERT_TRAINING.md) and benchmarks:

    python -m benchmarks.finetune_data --output-dir data/finetune-demo

- `source/{train,dev}.tsv` (sentence classification): a line of `wikitext2-valid.txt`
  (label `wiki`) or of `tinyshakespeare.txt` (label `shakespeare`), lines of 4 to 40 words;
- `speakers/{train,dev}.conll` (token classification): lines of speech from
  tinyshakespeare with every word that is a speaker's name in the play tagged `B-PER`
  (IOB2), other words `O`;
- `years/{train,dev}.json` (SQuAD v2.0): wikitext paragraphs with the question "In which
  year did it happen ?" whose answer is the paragraph's first year (1000-2099), or no
  answer (`is_impossible`) when the paragraph names none.

The split is by position in the corpus (the first 80% trains), so no line is in both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.common import corpus_path
from core.cli import argument_parser
from core.errors import UserError, run_cli
from core.files import atomic_folder

YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
SPEAKER = re.compile(r"^([A-Z][A-Za-z ]+):$")
SENTENCE_END = re.compile(r"(?<= [.!?]) ")
"""Where wikitext (tokenised text: ` . ` between sentences) starts a new sentence."""


def corpus_lines(name: str) -> list[str]:
    """The non-empty, non-heading lines of a corpus."""
    lines = corpus_path(name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("=")]


def _split(items: list, train_fraction: float = 0.8) -> tuple[list, list]:
    cut = int(len(items) * train_fraction)
    return items[:cut], items[cut:]


def _interleave(a: list, b: list) -> list:
    out = []
    for pair in zip(a, b):
        out.extend(pair)
    return out


def source_task(per_class: int, split_sentences: bool = False) -> dict[str, str]:
    """TSV files of the corpus-identification task, balanced and interleaved.

    Few wikitext lines are short enough (~330 of 4-40 words), which caps the task at that
    many lines per class; `split_sentences` cuts wikitext paragraphs into sentences first
    (~7,000 usable), for larger tasks of short single sentences (the benchmarks')."""
    def usable(lines: list[str]) -> list[str]:
        return [line for line in lines if 4 <= len(line.split()) <= 40 and "\t" not in line]

    wiki_lines = corpus_lines("wikitext2-valid.txt")
    if split_sentences:
        wiki_lines = [sentence for line in wiki_lines for sentence in SENTENCE_END.split(line)]
    wiki = usable(wiki_lines)
    shakespeare = usable([line for line in corpus_lines("tinyshakespeare.txt") if not SPEAKER.match(line)])
    step_wiki, step_shakespeare = max(1, len(wiki) // per_class), max(1, len(shakespeare) // per_class)
    wiki, shakespeare = wiki[::step_wiki][:per_class], shakespeare[::step_shakespeare][:per_class]
    files = {}
    for name, (w, s) in zip(("train", "dev"), zip(_split(wiki), _split(shakespeare))):
        rows = _interleave([(line, "wiki") for line in w], [(line, "shakespeare") for line in s])
        files[f"source/{name}.tsv"] = "sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows)
    return files


def speakers_task(num_sentences: int) -> dict[str, str]:
    """CoNLL files: speech lines with the play's speaker names tagged B-PER."""
    raw = corpus_path("tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()
    # A speaker line follows a blank line; a word the text also writes in lower case
    # ("Come", "First Citizen") is not a name.
    speakers = {match.group(1).split()[-1] for before, line in zip(raw, raw[1:])
                if not before.strip() and (match := SPEAKER.match(line.strip()))}
    lower_case_words = {word for line in raw for word in re.findall(r"[a-z']+", line)}
    names = {name.lower() for name in speakers if name.lower() not in lower_case_words and len(name) > 2}
    sentences = []
    for line in raw:
        words = re.findall(r"[A-Za-z']+|[.,;:!?]", line)
        if SPEAKER.match(line.strip()) or len(words) < 3:
            continue
        tags = ["B-PER" if word[0].isupper() and word.lower() in names else "O" for word in words]
        if "B-PER" in tags or len(sentences) % 3 == 0:  # keep most lines with a name
            sentences.append((words, tags))
        if len(sentences) >= num_sentences:
            break
    files = {}
    for name, part in zip(("train", "dev"), _split(sentences)):
        files[f"speakers/{name}.conll"] = "-DOCSTART- O\n\n" + "".join(
            "".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n" for words, tags in part)
    return files


def years_task(num_paragraphs: int) -> dict[str, str]:
    """SQuAD v2.0 files: 'In which year did it happen ?' over wikitext paragraphs."""
    candidates = [line for line in corpus_lines("wikitext2-valid.txt") if 30 <= len(line.split()) <= 200]
    with_year = [line for line in candidates if YEAR.search(line)][: num_paragraphs // 2]
    without_year = [line for line in candidates if not YEAR.search(line)][: num_paragraphs - len(with_year)]
    paragraphs = _interleave(with_year, without_year)  # half answerable, in corpus order
    files = {}
    for name, part in zip(("train", "dev"), _split(paragraphs)):
        qas = []
        for index, context in enumerate(part):
            match = YEAR.search(context)
            answers = [{"text": match.group(0), "answer_start": match.start()}] if match else []
            qas.append({"context": context, "qas": [{"id": f"{name}-{index}", "question": "In which year did it happen ?",
                                                     "answers": answers, "is_impossible": match is None}]})
        files[f"years/{name}.json"] = json.dumps({"version": "v2.0", "data": [{"title": "wikitext", "paragraphs": qas}]})
    return files


def main(argv: list[str] | None = None) -> None:
    """Write the three tasks' files into --output-dir (atomically)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="folder to create")
    parser.add_argument("--lines-per-class", type=int, default=1000, help="classification lines per corpus")
    parser.add_argument("--ner-sentences", type=int, default=1000, help="token classification sentences")
    parser.add_argument("--qa-paragraphs", type=int, default=600, help="question answering paragraphs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    args = parser.parse_args(argv)
    if min(args.lines_per_class, args.ner_sentences, args.qa_paragraphs) < 10:
        raise UserError("--lines-per-class, --ner-sentences and --qa-paragraphs must be at least 10")
    files = {**source_task(args.lines_per_class), **speakers_task(args.ner_sentences), **years_task(args.qa_paragraphs)}
    with atomic_folder(args.output_dir, overwrite=args.overwrite) as folder:
        for relative, text in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text, encoding="utf-8")
    for relative in sorted(files):
        print(f"{Path(args.output_dir) / relative}")


if __name__ == "__main__":
    run_cli(main)
