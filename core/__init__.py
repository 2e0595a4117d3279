"""The bottom layer: what every other package may use and nothing here imports from them.

- `errors`: `UserError` (one line, exit status 2), `ConfigError`, `run_cli`.
- `files`: one atomic file writer and one atomic folder writer.
- `batching`: how a global batch splits over ranks and micro-batches (`BatchLayout`).
- `constants`: values shared by data, models and losses (`IGNORE_LABEL_ID`).
"""
