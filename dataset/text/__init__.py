"""Text datasets (BERT): the on-disk format (`format`), masking (`masking`), reading raw
corpora (`corpus`), and the training stream and evaluation batches (`loader`)."""
