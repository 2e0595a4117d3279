"""The training engine: one loop for every architecture.

- `config`: the typed run configuration (Hydra composes, pydantic validates).
- `state`: `RunContext` (fixed for a run) and `TrainState` (what changes during it).
- `build`: turn a config into a ready run, piece by piece (model, train state, forward
  wrapping), and prepare the run folder.
- `loop`: the step, evaluation and fit.
- `checkpoint`: atomic checkpoints; save and restore of each stateful part side by side.
- `schedule`: the learning rate of every update.
- `optim`, `ema`, `distributed`, `prefetch`, `metrics`, `signals`: one concern each.
"""
