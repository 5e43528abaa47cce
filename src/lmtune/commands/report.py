"""``lmtune report OUT [OUT ...]``: a table of runs, grouped over seeds, with ``report.md`` and plots.

Each OUT is a run directory (with ``lmtune.yaml``) or a sweep directory (``sweep.yaml``, runs in
``runs/*``). Runs are grouped by the config keys that differ between them other than ``seed``;
each group's cells are the mean ± standard deviation over its runs. The table is printed and
written with the plots to ``--output`` (default: the first OUT when it is a sweep, else ./report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmtune.errors import UserError

SUMMARY = "a table of runs (loss, task scores, tokens/s, wall time), grouped over seeds, with report.md and plots"
DEFAULT_OUTPUT = Path("report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A table of runs: steps, final train loss, final and best validation loss and task scores,\n"
        "tokens/s and wall time. Runs are grouped by the config keys (lmtune.yaml) that differ between\n"
        "them other than seed; a group's cells are mean ± std over its runs (std with n - 1, '-' for one run).\n"
        "The table is printed and written to DIR/report.md, with plots in DIR/plots/."
    )
    parser.epilog = "examples:\n  lmtune report SWEEP                     # -> SWEEP/report.md, SWEEP/plots/\n  lmtune report RUN1 RUN2 --output cmp    # -> cmp/report.md, cmp/plots/"
    parser.add_argument("runs", metavar="OUT", type=Path, nargs="+", help="a run directory (with lmtune.yaml) or a sweep directory (with sweep.yaml; its runs/*)")
    parser.add_argument("--output", dest="report_dir", metavar="DIR", type=Path, help=f"where report.md and plots/ go (default: the first OUT if it is a sweep, else ./{DEFAULT_OUTPUT})")


def run(args: argparse.Namespace) -> None:
    from lmtune.report.runs import (
        find_runs,
        group_runs,
        is_run,
        is_sweep,
        summarize_run,
    )
    from lmtune.report.table import format_text, group_table, report_markdown

    report_dir = args.report_dir or (args.runs[0] if is_sweep(args.runs[0]) else DEFAULT_OUTPUT)
    if is_run(report_dir):
        raise UserError(f"--output {report_dir} is a run directory, whose plots/ holds the run's own plots; choose another directory.")
    if report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--output {report_dir} is a file; give a directory for report.md and plots/.")
    runs = [summarize_run(path, name) for name, path in find_runs(args.runs)]
    keys, groups = group_runs(runs)

    from lmtune.report.plots import write_report_plots

    plots = write_report_plots(groups, report_dir / "plots")
    (report_dir / "report.md").write_text(report_markdown(args.runs, keys, groups, plots, report_dir))
    print(format_text(*group_table(groups)), end="")
    print(f"\nwrote {report_dir / 'report.md'} and {len(plots)} plot(s) in {report_dir / 'plots'}")
