"""Trainer exports: one validated :class:`~curamix.mixture.Mixture`, rendered per trainer.

::

    from curamix.export import load_mixture, render_megatron, export_mixture

    mix = load_mixture("runs/demo")             # RUN/mixture.json, a Mixture or a recommendation
    render_megatron(mix, template="/data/{domain}_text_document", stage="main")
    export_mixture(mix, "olmo-core", "exports/", template="/data/{domain}/*.npy")

Formats (:data:`FORMATS`): ``json``, ``yaml``, ``csv``, ``megatron``, ``olmo-core``,
``nanotron``, ``llm-foundry``, ``hf``, ``levanter``. See ``docs/export.md``.
"""

from curamix.export.load import RUN_MIXTURE, as_mixture, load_mixture
from curamix.export.render import (
    ALIASES,
    FORMATS,
    ExportFormat,
    format_name,
    format_options,
    render,
    render_csv,
    render_hf,
    render_json,
    render_levanter,
    render_llm_foundry,
    render_megatron,
    render_megatron_script,
    render_nanotron,
    render_notes,
    render_olmo_core,
    render_yaml,
)
from curamix.export.write import export_command, export_file_name, export_mixture, scale_mixture

__all__ = [
    "ALIASES",
    "FORMATS",
    "RUN_MIXTURE",
    "ExportFormat",
    "as_mixture",
    "export_command",
    "export_file_name",
    "export_mixture",
    "format_name",
    "format_options",
    "load_mixture",
    "render",
    "render_csv",
    "render_hf",
    "render_json",
    "render_levanter",
    "render_llm_foundry",
    "render_megatron",
    "render_megatron_script",
    "render_nanotron",
    "render_notes",
    "render_olmo_core",
    "render_yaml",
    "scale_mixture",
]
