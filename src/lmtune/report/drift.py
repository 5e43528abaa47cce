"""Representation drift of a run: each saved step's hidden states against the model before training.

Reads OUT/representations/ (``lmtune.training.representation_store``), compares every layer at every
saved step with the same layer at step 0 (linear CKA and mean cosine similarity,
``lmtune.report.similarity``), and writes OUT/drift.json and OUT/plots/drift.png.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.files import atomic_write, atomic_write_text
from lmtune.report.similarity import linear_cka, mean_cosine_similarity
from lmtune.training.representation_store import load_step, read_index, saved_steps

DRIFT_FILE = "drift.json"
PLOT_FILE = "plots/drift.png"
REFERENCE_STEP = 0


@dataclass(kw_only=True)
class Drift:
    layers: list[int]
    steps: list[int]
    cka: list[list[float]]
    """cka[l][s]: layer ``layers[l]`` at step ``steps[s]`` against step 0."""
    cosine: list[list[float]]

    def as_json(self, index: dict[str, Any]) -> dict[str, Any]:
        def clean(rows: list[list[float]]) -> list[list[float | None]]:
            return [[None if math.isnan(v) else v for v in row] for row in rows]

        return {
            "reference_step": REFERENCE_STEP, "layers": self.layers, "steps": self.steps,
            "layer_0": index.get("layer_0", "embedding output"), "layer_i": index.get("layer_i", "output of decoder layer i"),
            "num_examples": index.get("num_examples"), "linear_cka": clean(self.cka), "mean_cosine_similarity": clean(self.cosine),
        }  # fmt: skip


def compute_drift(out_dir: Path) -> tuple[Drift, dict[str, Any]]:
    index = read_index(out_dir)
    steps = saved_steps(out_dir)
    if REFERENCE_STEP not in steps:
        raise UserError(f"{out_dir}/representations has no step_0.npy (the model before training) to compare against; it has steps {steps}.")
    reference = load_step(out_dir, REFERENCE_STEP)
    layers = [int(layer) for layer in index.get("layers", range(reference.shape[0]))]
    cka: list[list[float]] = [[] for _ in layers]
    cosine: list[list[float]] = [[] for _ in layers]
    for step in steps:
        states = load_step(out_dir, step)
        if states.shape != reference.shape:
            raise UserError(f"{out_dir}/representations/step_{step}.npy has shape {tuple(states.shape)}, step 0 has {tuple(reference.shape)}; the representations settings changed within the run.")
        for i in range(len(layers)):
            cka[i].append(linear_cka(reference[i], states[i]))
            cosine[i].append(mean_cosine_similarity(reference[i], states[i]))
    return Drift(layers=layers, steps=steps, cka=cka, cosine=cosine), index


def format_drift(drift: Drift) -> str:
    """Two tables, one row per layer and one column per saved step."""
    width = max(9, *(len(f"step {s}") + 1 for s in drift.steps))
    header = "layer".ljust(7) + "".join(f"step {s}".rjust(width) for s in drift.steps)
    lines = []
    for title, rows in (("linear CKA", drift.cka), ("mean cosine similarity", drift.cosine)):
        lines += [f"{title} against step 0 (layer 0: embedding output; layer i: decoder layer i's output)", header]
        for layer, row in zip(drift.layers, rows):
            lines.append(str(layer).ljust(7) + "".join(f"{v:.4f}".rjust(width) for v in row))
        lines.append("")
    return "\n".join(lines)


def write_drift(out_dir: Path, drift: Drift, index: dict[str, Any]) -> tuple[Path, Path]:
    json_path = out_dir / DRIFT_FILE
    atomic_write_text(json_path, json.dumps(drift.as_json(index), indent=2) + "\n")
    return json_path, write_drift_plot(drift, out_dir / PLOT_FILE)


def write_drift_plot(drift: Drift, path: Path) -> Path:
    """Two panels, CKA and cosine similarity against the step, one line per layer (light: early, dark: late)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    colors = colormaps["viridis_r"]
    for ax, title, rows in zip(axes, ("linear CKA against step 0", "mean cosine similarity against step 0"), (drift.cka, drift.cosine)):
        for i, (layer, row) in enumerate(zip(drift.layers, rows)):
            label = "embedding" if layer == 0 else f"layer {layer}"
            ax.plot(drift.steps, row, marker="o", markersize=3, color=colors(0.15 + 0.85 * i / max(1, len(drift.layers) - 1)), label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", ncol=1 if len(drift.layers) <= 10 else 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
    return path
