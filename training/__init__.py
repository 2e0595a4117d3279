"""The training engine: one loop for every architecture.

- `config`: the typed run configuration (Hydra composes, pydantic validates).
- `state`: `RunContext` (fixed for a run) and `TrainState` (everything a checkpoint holds).
- `build`: turn a config into a ready run (plugin, data kind, model, optimisers, restore).
- `loop`: the step, evaluation and fit.
- `checkpoint`: atomic checkpoints; save and restore of each stateful part side by side.
- `optim`, `ema`, `distributed`, `prefetch`, `metrics`, `signals`: one concern each.
"""
