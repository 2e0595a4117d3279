#!/usr/bin/env bash
# End-to-end demo on CPU with data made on the spot (no download), a few minutes each:
#   bash scripts/demo.sh trm    generated Sudoku -> train a small TRM -> evaluate
#   bash scripts/demo.sh bert   stdlib docstrings -> WordPiece shards -> train bert_tiny -> evaluate -> export to transformers
#   bash scripts/demo.sh        both
# Everything lands in data/demo-* and checkpoints/demo/; run it again to start afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
common=(wandb=disabled +project_name=demo)

demo_trm() {
  echo "== TRM: build a generated Sudoku set (400 train puzzles x 4 augmentations, 100 test)"
  python dataset/build_sudoku_dataset.py --output-dir data/demo-sudoku --generate 400 --test-size 100 \
    --num-aug 4 --seed 0 --overwrite
  echo "== TRM: train a small TRM (hidden 64, H_cycles 2, L_cycles 2) for 100 steps, then evaluate"
  rm -rf checkpoints/demo/trm
  python pretrain.py arch=trm data_paths="[data/demo-sudoku]" \
    arch.hidden_size=64 arch.num_heads=4 arch.H_cycles=2 arch.L_cycles=2 \
    global_batch_size=64 epochs=16 eval_interval=8 lr=1e-3 puzzle_emb_lr=1e-3 lr_warmup_steps=10 \
    log_interval=10 +run_name=trm "${common[@]}"
  python -m utils.plot_metrics checkpoints/demo/trm
}

demo_bert() {
  echo "== BERT: write a corpus from the Python standard library's docstrings"
  python -m dataset.demo_corpus --output data/demo-corpus.txt --overwrite
  echo "== BERT: train a WordPiece vocabulary and pack sequences of 128 tokens"
  python dataset/build_text_mlm_dataset.py --input-files data/demo-corpus.txt --output-dir data/demo-mlm \
    --vocab-size 8000 --max-seq-length 128 --overwrite
  echo "== BERT: train bert_tiny for 120 steps, then evaluate (held-out MLM loss, accuracy, perplexity)"
  rm -rf checkpoints/demo/bert
  python pretrain.py arch=bert_tiny data_paths="[data/demo-mlm]" global_batch_size=32 lr=5e-4 \
    lr_warmup_steps=20 epochs=1 max_steps=120 log_interval=20 +run_name=bert "${common[@]}"
  python -m utils.plot_metrics checkpoints/demo/bert
  if python -c "import transformers" 2>/dev/null; then
    echo "== BERT: export to Hugging Face transformers and fill a mask"
    python -m utils.export_hf --checkpoint checkpoints/demo/bert --output-dir checkpoints/demo/bert-hf --overwrite
    python - <<'PY'
from transformers import pipeline
fill = pipeline("fill-mask", model="checkpoints/demo/bert-hf")
sentence = "Return the [MASK] of the list."
print(f"  filling: {sentence}")
for guess in fill(sentence)[:3]:
    print(f"  {guess['sequence']!r}  (score {guess['score']:.3f})")
PY
  fi
}

case "$what" in
  trm) demo_trm ;;
  bert) demo_bert ;;
  all) demo_trm; demo_bert ;;
  *) echo "usage: bash scripts/demo.sh [trm|bert|all]" >&2; exit 2 ;;
esac
