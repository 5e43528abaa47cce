"""Two generation runs on the same prompts, compared: what ``lmtune compare GEN_A GEN_B`` writes as compare.json.

A generation run is a directory ``lmtune generate`` wrote: ``generations.jsonl`` (one line per
prompt, in input order) and ``scores.json`` (its task and labels). Both runs are rescored from
their completions, per example, so the differences are paired (``lmtune.score.paired``), and the
prompts where the runs answer differently are listed, A's and B's completions side by side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lmtune.errors import UserError
from lmtune.score.bootstrap import LEVEL
from lmtune.score.scores_file import Prediction, read_predictions

GENERATIONS, SCORES, COMPARE = "generations.jsonl", "scores.json", "compare.json"
SHOWN = 5  # disagreements printed; compare.json holds all


@dataclass(kw_only=True)
class GenerationRun:
    path: Path
    predictions: list[Prediction]
    task: str | None
    """scores.json's task; None without one."""
    labels: list[str] | None
    """scores.json's labels (its confusion matrix's rows), for classification."""


def read_generation_run(path: Path) -> GenerationRun:
    if not (path / GENERATIONS).is_file():
        raise UserError(f"{path} holds no {GENERATIONS}; give a directory written by `lmtune generate`.")
    task = labels = None
    scores_path = path / SCORES
    if scores_path.is_file():
        try:
            scores = json.loads(scores_path.read_text())
        except json.JSONDecodeError as ex:
            raise UserError(f"{scores_path}: not valid JSON ({ex.msg} at line {ex.lineno}); rewrite it with `lmtune score {path / GENERATIONS} --task TASK`.") from None
        task = scores.get("task") if isinstance(scores, dict) else None
        cm = scores.get("confusion_matrix") if isinstance(scores, dict) else None
        labels = cm.get("rows") if isinstance(cm, dict) else None
    return GenerationRun(path=path, predictions=read_predictions(path / GENERATIONS), task=task, labels=labels)


def check_same_prompts(a: GenerationRun, b: GenerationRun, task: str) -> None:
    """Refuses two runs whose prompts (or references) are not the same, line by line."""
    pa, pb = a.predictions, b.predictions
    for x, y in zip(pa, pb):
        if x.prompt != y.prompt:
            raise UserError(f"{y.where}: its prompt differs from {x.where}'s; compare needs two runs over the same prompts, in the same order.")
        if x.reference_for(task) != y.reference_for(task):
            raise UserError(f"{y.where}: its reference differs from {x.where}'s; compare needs two runs over the same prompts and references.")
    if len(pa) != len(pb):
        raise UserError(f"{b.path / GENERATIONS} has {len(pb)} prompts and {a.path / GENERATIONS} {len(pa)}; compare needs two runs over the same prompts.")


def choose_task(a: GenerationRun, b: GenerationRun, task: str | None, labels: list[str] | None) -> tuple[str, list[str] | None]:
    """--task, else the runs' scores.json task (the same in both); labels likewise."""
    if task is None:
        found = {r.task for r in (a, b) if r.task is not None}
        if len(found) > 1:
            raise UserError(f"{a.path / SCORES} scores task {a.task} and {b.path / SCORES} task {b.task}; give --task to compare both by one task.")
        if not found:
            raise UserError(f"neither {a.path} nor {b.path} has a {SCORES} naming its task; give --task gsm8k|classification|exact_match|qa.")
        task = found.pop()
    if labels is None and task == "classification":
        if a.labels is not None and b.labels is not None and a.labels != b.labels:
            raise UserError(f"{a.path / SCORES} has labels {a.labels} and {b.path / SCORES} {b.labels}; give --labels A,B,C to compare both over one label set.")
        labels = a.labels or b.labels
    return task, labels


def compare_runs(a: GenerationRun, b: GenerationRun, task: str, labels: list[str] | None, *, resamples: int, seed: int) -> dict[str, object]:
    """compare.json: every score of A and B, B - A with its paired interval and p-value, and the disagreements."""
    from lmtune.score.paired import compare_scores
    from lmtune.score.tasks import check_references, example_scores, nest

    check_same_prompts(a, b, task)
    references = [p.reference_for(task) for p in a.predictions]
    labels = check_references(task, [(p.where, ref) for p, ref in zip(a.predictions, references)], labels)
    ex_a = example_scores(task, [(p.completion, ref) for p, ref in zip(a.predictions, references)], labels)  # type: ignore[misc]
    ex_b = example_scores(task, [(p.completion, ref) for p, ref in zip(b.predictions, references)], labels)  # type: ignore[misc]
    differences = compare_scores(ex_a, ex_b, resamples=resamples, seed=seed)
    right_a, right_b = ex_a.means["accuracy",], ex_b.means["accuracy",]
    disagreements = []
    for i, (pa, pb) in enumerate(zip(a.predictions, b.predictions)):
        if ex_a.answers[i] != ex_b.answers[i]:
            disagreements.append({
                "line": i + 1,
                "prompt": pa.prompt,
                "reference": references[i],
                "completion_a": pa.completion,
                "completion_b": pb.completion,
                "answer_a": ex_a.answers[i],
                "answer_b": ex_b.answers[i],
                "correct_a": bool(right_a[i]),
                "correct_b": bool(right_b[i]),
            })
    return {
        "a": str(a.path),
        "b": str(b.path),
        "task": task,
        **({"labels": labels} if labels else {}),
        "num_examples": ex_a.num_examples,
        "bootstrap": {"method": "paired percentile", "level": LEVEL, "resamples": resamples, "seed": seed},
        "scores": nest({path: {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(d).items() if v is not None} for path, d in differences.items()}),
        "disagreements": {"count": len(disagreements), "examples": disagreements},
    }


def _one_line(text: object, width: int = 100) -> str:
    text = json.dumps(text, ensure_ascii=False) if not isinstance(text, str) else text
    flat = " ".join(text.split())
    if not flat:
        return "(empty)"
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def format_comparison(result: dict[str, object], shown: int = SHOWN) -> str:
    """The top-level scores (per-label ones stay in the file) and the first disagreements."""
    n = result["num_examples"]
    boot: dict[str, object] = result["bootstrap"]  # type: ignore[assignment]
    lines = [
        f"compare: {result['task']} on {n} prompts, B - A   (A: {result['a']}, B: {result['b']})",
        f"95% paired bootstrap intervals over {boot['resamples']} resamples (seed {boot['seed']})",
        f"  {'score':12} {'A':>7} {'B':>7} {'B - A':>8}  {'95% CI of B - A':>20}  {'p':>7}  test",
    ]
    for name, d in result["scores"].items():  # type: ignore[attr-defined]
        if name == "per_class" or (name == "accuracy" and "exact_match" in result["scores"]):  # type: ignore[operator]
            continue  # per-label: in the file; qa's accuracy is its exact match
        test = f"McNemar exact (A only right {d['a_only']}, B only right {d['b_only']})" if d["test"] == "mcnemar_exact" else "paired bootstrap"
        lo, hi = d["interval"]
        lines.append(f"  {name:12} {d['a']:7.4f} {d['b']:7.4f} {d['difference']:+8.4f}  [{lo:+.4f}, {hi:+.4f}]  {d['p_value']:7.4f}  {test}")
    if "per_class" in result["scores"]:  # type: ignore[operator]
        lines.append("  (per-label precision, recall and F1 differences: in compare.json)")
    found: dict[str, object] = result["disagreements"]  # type: ignore[assignment]
    examples: list[dict[str, object]] = found["examples"]  # type: ignore[assignment]
    lines.append(f"disagreements: {found['count']} of {n} prompts answered differently" + (f"; the first {min(shown, len(examples))}:" if examples else ""))
    for e in examples[:shown]:
        mark = {True: "right", False: "wrong"}
        lines.append(f"  line {e['line']}: {_one_line(e['prompt'])}")
        lines.append(f"    A ({mark[e['correct_a']]}): {_one_line(e['completion_a'])}")  # type: ignore[index]
        lines.append(f"    B ({mark[e['correct_b']]}): {_one_line(e['completion_b'])}")  # type: ignore[index]
        lines.append(f"    reference: {_one_line(e['reference'])}")
    return "\n".join(lines)
