"""Models: the model <-> loop contract (`interface`), shared layers and losses, and one
plugin package per architecture (`trm/`, `bert/`), listed in `registry`."""
