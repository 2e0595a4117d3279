"""User-facing tools on top of everything: `python -m utils.export_hf`, `python -m utils.plot_metrics`."""
