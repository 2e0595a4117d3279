"""Puzzle datasets (TRM): the on-disk format and its writer (`format`), the training
stream and evaluation batches (`loader`), what the builders share (`builder`), and each
puzzle family's rules and generators (`sudoku`, `maze`, `arc`)."""
