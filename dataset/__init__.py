"""Datasets: one family per folder (`puzzles/`, `text/`), the data <-> loop contract
(`stream`), the data kinds the engine reads (`kinds`), and the builder command lines
(`build_*_dataset.py`, `demo_corpus.py`)."""
