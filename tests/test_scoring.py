"""Task scores against hand-computed values; the confusion-matrix PNG read back."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from helpers import run_lmtune_in_process
from lmtune.errors import UserError
from lmtune.score.confusion_png import confusion_figure, row_shares, write_confusion_png
from lmtune.score.tasks import (
    INVALID,
    check_references,
    format_table,
    gsm8k_answer,
    parse_label,
    score,
)

LABELS = ["World", "Sports", "Business"]


def ref(label: str) -> str:
    return json.dumps({"category": label})


# (completion, reference): confusion by hand, rows = truth, columns = World, Sports, Business, invalid
#   World    2 1 0 0
#   Sports   0 2 0 1
#   Business 1 0 3 0
PAIRS = [
    ('{"category": "World"}', ref("World")),
    ("World", ref("World")),
    ("sports.", ref("World")),
    ('"Sports"', ref("Sports")),
    ('```json\n{"category": "Sports"}\n```', ref("Sports")),
    ("I think it is sports news", ref("Sports")),
    ("Business", ref("Business")),
    ('{"category": "World"}', ref("Business")),
    ('{"category": "business"}', ref("Business")),
    (" BUSINESS ", ref("Business")),
]


def test_classification_metrics_equal_hand_computation() -> None:
    s = score("classification", PAIRS, LABELS)
    assert s["confusion_matrix"] == {"rows": LABELS, "columns": LABELS + [INVALID], "counts": [[2, 1, 0, 0], [0, 2, 0, 1], [1, 0, 3, 0]]}
    assert s["accuracy"] == pytest.approx(7 / 10)
    assert s["invalid"] == 1
    # World: 2 right of 3 predicted and 3 true; Business: 3 of 3 predicted, 3 of 4 true.
    expected = {
        "World": (Fraction(2, 3), Fraction(2, 3)),
        "Sports": (Fraction(2, 3), Fraction(2, 3)),
        "Business": (Fraction(1), Fraction(3, 4)),
    }
    f1s = []
    for label, (p, r) in expected.items():
        f1 = 2 * p * r / (p + r)
        f1s.append(f1)
        c = s["per_class"][label]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((float(p), float(r), float(f1)))
    assert s["per_class"]["Business"]["f1"] == pytest.approx(6 / 7)
    assert s["per_class"]["Business"]["support"] == 4
    assert s["macro_f1"] == pytest.approx(float(sum(f1s) / 3)) == pytest.approx(46 / 63)


def test_class_never_predicted_nor_present_counts_zero_in_macro_f1() -> None:
    s = score("classification", [("a", "a"), ("a", "b")], ["a", "b", "c"])
    # a: P 1/2 R 1 F1 2/3; b: 0; c: no support, never predicted: 0 (as scikit-learn's zero_division=0)
    assert s["macro_f1"] == pytest.approx((2 / 3) / 3)
    assert s["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_parse_label() -> None:
    assert parse_label('{"category": "Sci/Tech"}', ["World", "Sci/Tech"]) == "Sci/Tech"
    assert parse_label("sci/tech", ["World", "Sci/Tech"]) == "Sci/Tech"
    assert parse_label('Answer: {"category": "World"} because', ["World", "Sci/Tech"]) == "World"
    assert parse_label('{"label": "World"}', ["World"]) is None
    assert parse_label("Worldwide", ["World"]) is None
    assert parse_label("", ["World"]) is None


def test_gsm8k_answers_and_accuracy() -> None:
    assert gsm8k_answer("3 + 4 = 7\n#### 1,234") == 1234
    assert gsm8k_answer("#### $18.50") == pytest.approx(18.5)
    assert gsm8k_answer("#### -3") == -3
    assert gsm8k_answer("the answer is 5") is None
    assert gsm8k_answer("#### none") is None
    pairs = [
        ("so #### 1,234", "#### 1234"),  # commas dropped
        ("#### 12.0", "x\n#### 12"),  # the same number
        ("The answer is 5", "#### 5"),  # no '####': no answer
        ("#### 7\n#### 8", "#### 8"),  # the last '####' counts
        ("#### -3", "#### 3"),
    ]
    s = score("gsm8k", pairs)
    assert (s["correct"], s["no_answer"], s["num_examples"]) == (3, 1, 5)
    assert s["accuracy"] == pytest.approx(0.6)
    assert "accuracy  0.6000  (3/5)" in format_table(s)


def test_exact_match() -> None:
    s = score("exact_match", [(" yes\n", "yes"), ("Yes", "yes"), ("no", "no")])
    assert (s["correct"], s["accuracy"]) == (2, pytest.approx(2 / 3))


def test_check_references() -> None:
    refs = [("f:1", ref("World")), ("f:2", "Sports"), ("f:3", ref("World"))]
    assert check_references("classification", refs, None) == ["Sports", "World"]  # labels from the references
    assert check_references("classification", refs, LABELS) == LABELS
    with pytest.raises(UserError, match="f:2: .* one of the labels"):
        check_references("classification", refs, ["World", "Business"])
    with pytest.raises(UserError, match="f:1: score=gsm8k .* 2 of 3"):
        check_references("gsm8k", [("f:1", "7"), ("f:2", "#### 7"), ("f:3", "eight")], None)
    with pytest.raises(UserError, match="f:2: score=exact_match needs a reference"):
        check_references("exact_match", [("f:1", "a"), ("f:2", None)], None)


def cell_pixels(rows: list[str], columns: list[str], counts: list[list[int]], height: int) -> dict:
    """(i, j) -> PNG pixel (x, y) inside each cell, off-centre so the count's digits are missed."""
    fig = confusion_figure(rows, columns, counts)
    fig.canvas.draw()  # settles the constrained layout, as savefig does
    ax = fig.axes[0]
    out = {}
    for i in range(len(rows)):
        for j in range(len(columns)):
            x, y = ax.transData.transform((j - 0.3, i - 0.3))
            out[i, j] = (int(x), height - 1 - int(y))  # display origin is bottom-left, the PNG's top-left
    return out


def test_confusion_matrix_png_shades_cells_by_row_share(tmp_path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.image import imread

    s = score("classification", PAIRS, LABELS)
    cm = s["confusion_matrix"]
    path = write_confusion_png(tmp_path / "cm.png", cm["rows"], cm["columns"], cm["counts"])
    assert path == tmp_path / "cm.png" and sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]  # no staging file left
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)  # floats in [0, 1], RGBA
    fig = confusion_figure(cm["rows"], cm["columns"], cm["counts"])
    w, h = fig.get_size_inches() * fig.dpi
    assert pixels.shape == (round(h), round(w), 4) == (360, 640, 4)

    at = cell_pixels(cm["rows"], cm["columns"], cm["counts"], pixels.shape[0])
    shares = row_shares(cm["counts"])
    darkness = {}
    for (i, j), (x, y) in at.items():
        rgb = pixels[y, x, :3]
        expected = colormaps["Blues"](shares[i][j])[:3]
        assert abs(rgb - expected).max() < 0.02, ((i, j), rgb, expected)
        darkness[i, j] = 3 - rgb.sum()
    assert darkness[0, 3] == darkness[1, 0] == min(darkness.values())  # the zero cells are the lightest
    assert darkness[2, 2] > darkness[2, 0] > darkness[2, 1]  # Business 3 > 1 > 0
    assert darkness[1, 1] > darkness[1, 3] > darkness[1, 0]  # Sports 2 > 1 > 0


def test_confusion_png_is_the_same_each_time(tmp_path: Path) -> None:
    args = (["a", "b"], ["a", "b", "(invalid)"], [[5, 0, 1], [2, 2, 0]])
    first = write_confusion_png(tmp_path / "1.png", *args).read_bytes()
    assert write_confusion_png(tmp_path / "2.png", *args).read_bytes() == first
    assert b"Matplotlib" not in first


def test_row_shares() -> None:
    assert row_shares([[1, 3], [0, 0]]) == [[0.25, 0.75], [0.0, 0.0]]


def test_score_command_writes_scores_and_png(tmp_path: Path) -> None:
    preds = tmp_path / "generations.jsonl"
    preds.write_text("".join(json.dumps({"prompt": "p", "completion": c, "reference": r}) + "\n" for c, r in PAIRS))
    out = tmp_path / "eval" / "base.json"
    r = run_lmtune_in_process("score", str(preds), "--task", "classification", "--labels", "World,Sports,Business", "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(out.read_text())
    assert s["accuracy"] == pytest.approx(0.7) and s["macro_f1"] == pytest.approx(46 / 63)
    assert (out.parent / s["confusion_matrix_png"]).is_file()
    assert "macro F1  0.7302" in r.stdout and "Business" in r.stdout
