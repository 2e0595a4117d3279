"""Values that the data, the models and the losses must agree on."""

IGNORE_LABEL_ID = -100
"""Label value that the losses skip (PyTorch's cross-entropy convention)."""
