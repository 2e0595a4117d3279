"""Run every benchmark in turn; each appends its table to benchmarks/RESULTS.md.

    python -m benchmarks.run_all                  # CPU: bert_tiny, the builder, input formats, TRM small + Sudoku
    python -m benchmarks.run_all --device cuda    # GPU: BERT-Base bf16, the builder, TRM Sudoku
"""

from __future__ import annotations

from benchmarks import bert_train, corpus_read, mlm_build, trm_train
from core.cli import argument_parser
from core.errors import run_cli


def main(argv: list[str] | None = None) -> None:
    """Run bert_train, mlm_build, corpus_read and trm_train with their defaults for `--device`
    (mlm_packing trains two models and is run on its own)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every benchmark")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    shared = ["--rounds", str(args.rounds)] + (["--no-record"] if args.no_record else [])
    bert_train.main(["--device", args.device, *shared])
    mlm_build.main(shared)
    corpus_read.main(shared)
    trm_train.main(["--device", args.device, *shared])


if __name__ == "__main__":
    run_cli(main)
