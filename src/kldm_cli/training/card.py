"""The model card (``README.md``) written into every model folder a training run produces."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kldm_cli.config import KLDMConfig


def model_card(config: KLDMConfig, summary: dict[str, Any]) -> str:
    """A model card (README.md) with the Hub's YAML front matter (see ``weights/README.md``).

    ``kldm_metrics`` is deliberately absent: it is added at release time together with the
    ``kldm evaluate`` command that measured it.
    """
    task_tag = "crystal-structure-prediction" if config.task == "csp" else "crystal-generation"
    task_words = (
        "crystal structure prediction (composition given; coordinates and lattice generated)"
        if config.task == "csp"
        else "de novo generation (atom types, coordinates and lattice generated)"
    )
    data = config.provenance.get("train_data")
    sha = str(config.provenance.get("train_data_sha256", "?"))
    lines = [
        "---",
        "library_name: kldm",
        "license: mit",
        f"tags: [kldm, materials, diffusion, {task_tag}]",
        f"task: {config.task}",
        "---",
        f"# kldm {config.task.upper()} model",
        "",
        "Kinetic Langevin Diffusion for Materials (Cornet, Bergamin et al., ICML 2025), trained",
        "with `kldm train`.",
        "",
        "## Task",
        "",
        f"{task_words[0].upper()}{task_words[1:]}.",
        "",
        "## Data",
        "",
        f"- training data: `{data}` (sha256 `{sha[:16]}…`, full hash in `config.json`)",
        f"- elements: {len(config.elements)}; atoms per cell: "
        f"{config.min_atoms}–{config.max_atoms}",
        "",
        "## Training",
        "",
        f"- preset: {config.provenance.get('preset')}; network: {asdict(config.network)}",
    ]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    lines += [
        "",
        "## Metrics",
        "",
        "Not measured yet. Measure with `kldm evaluate` and add the numbers to the front matter",
        "as `kldm_metrics`, with the exact command as `kldm_metrics_command`.",
        "",
        "## Limitations",
        "",
        "Generates only elements and atom counts seen in training; metrics, where reported, "
        "were measured with `kldm evaluate` and are listed with their command.",
        "",
    ]
    return "\n".join(lines)
