"""Evaluation procedures beyond the loss metrics (ARC voting); `registry` lists them."""
