"""Shared test set-up: one torch thread.

The tests run tiny models, where thread hand-offs cost more than they save, and CI has
two cores shared with subprocess tests (which set OMP_NUM_THREADS=1 themselves).
"""

import torch

torch.set_num_threads(1)
