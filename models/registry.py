"""Architectures by short name: `arch.name` -> its plugin (`models.interface.ArchPlugin`).

Adding an architecture is its folder `models/<name>/` (exporting `PLUGIN`), one YAML in
`config/arch/`, and one line here; the engine needs no edit. Presets such as
`bert_large` and `bert_tiny` are YAML files that extend `bert.yaml` with other sizes.
"""

from __future__ import annotations

from core.errors import ConfigError
from models import bert, trm
from models.interface import ArchPlugin

ARCHITECTURES: dict[str, ArchPlugin] = {
    "trm": trm.PLUGIN,
    "bert": bert.PLUGIN,
    **bert.TASK_PLUGINS,  # bert_cls, bert_ner, bert_qa
}


def get_arch(name: str) -> ArchPlugin:
    """The plugin for `arch.name`; an unknown name lists the known ones."""
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"unknown arch.name '{name}'; known architectures: {known}")
    return ARCHITECTURES[name]
