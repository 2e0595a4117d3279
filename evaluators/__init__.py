"""Evaluation procedures beyond the loss metrics (ARC voting, the fine-tuning benchmarks' metrics); `registry` lists them."""
