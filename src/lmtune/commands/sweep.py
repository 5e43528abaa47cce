"""``lmtune sweep OUT --config-file F --grid learning_rate=1e-5,2e-5 seed=42,1337``:
instruction_finetune (or ``--recipe preference_finetune``) over every point of a grid, each
into ``OUT/runs/<name>``.

Locally the points run one after another, each in its own process; with ``--slurm``
they become one SLURM job array. Rerunning the sweep skips finished points and resumes
the others from their checkpoints.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from lmtune.commands.common import (
    add_config_arguments,
    add_out_argument,
    add_verbose_argument,
)
from lmtune.errors import RunFailed, Stopped, UserError

SUMMARY = "instruction_finetune (or preference_finetune) over a grid of config values (seeds, learning rates, ...), locally or as a SLURM job array"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune once per point of a grid of config values, each point into OUT/runs/<name>,\n"
        "named after its values (e.g. OUT/runs/learning_rate=1e-5,seed=42). Rerun the same\n"
        "command to resume: finished points are skipped, unfinished ones resume from their checkpoints."
    )
    parser.epilog = (
        "examples:\n"
        "  lmtune sweep OUT --config-file tiny_gsm8k --grid learning_rate=1e-4,3e-4 seed=1,2,3\n"
        "  lmtune sweep OUT --recipe preference_finetune --config-file dpo.yaml --grid criterion.beta=0.1,0.5\n"
        "  lmtune sweep OUT --config-file cfg.yaml --grid seed=1,2,3 --slurm --sbatch gpus-per-node=8 time=04:00:00\n"
        "  lmtune sweep OUT --config-file cfg.yaml --grid seed=1,2 --launcher 'torchrun --standalone --nproc-per-node=8 --no-python'\n"
        "  lmtune report OUT            # compare the points: mean ± std over seeds, plots"
    )
    add_out_argument(parser)
    add_config_arguments(parser, "max_num_steps=500")
    parser.usage = "%(prog)s OUT [--config-file F] [--config KEY=VALUE ...] --grid KEY=V1,V2 ... [--slurm [--sbatch NAME=VALUE ...]] [--dry-run]"
    parser.add_argument("--recipe", default="instruction_finetune", metavar="VERB", help="the training verb each point runs: instruction_finetune (default) or preference_finetune (the points share the reference log-probs)")
    parser.add_argument("--grid", metavar="KEY=V1,V2", nargs="+", action="extend", default=[], help="a config key (dotted keys too) and its values; the points are the product of all --grid keys")
    parser.add_argument("--slurm", action="store_true", help="write OUT/sweep.sbatch, a job array with one task per unfinished point, and submit it with sbatch")
    parser.add_argument("--sbatch", metavar="NAME=VALUE", nargs="+", action="extend", default=[], help="sbatch options for --slurm, without dashes (nodes=2 ntasks-per-node=8 gpus-per-node=8 time=04:00:00 partition=...)")
    parser.add_argument("--dry-run", action="store_true", help="print the job array script (with --slurm) or the points, and run nothing")
    parser.add_argument("--launcher", metavar="CMD", help="a command each local point runs under, e.g. 'torchrun --standalone --nproc-per-node=8 --no-python'")
    parser.add_argument("--point", type=int, metavar="N", help="run only point N (0-based) of the sweep already in OUT")
    parser.add_argument("--array-task", action="store_true", help="run the point SLURM_ARRAY_TASK_ID names (what the job array's tasks run)")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> None:
    from lmtune.sweep.points import check_recipe, is_finished, point_options
    from lmtune.sweep.sweep_dir import run_dir

    out: Path = args.output_dir
    if args.array_task or args.point is not None:
        _run_one(out, args)
        return
    from lmtune.sweep.grid import grid_points, parse_grid
    from lmtune.sweep.sweep_dir import save_definition

    recipe = args.recipe
    check_recipe(recipe)
    grid = parse_grid(args.grid)
    points = grid_points(grid)
    options = [point_options(args.config_file, args.config, p, recipe) for p in points]  # a bad key or value fails before anything runs
    if args.dump_config:
        from lmtune.options.load import dump_yaml

        print("---\n".join(f"# {p.name}\n{dump_yaml(o)}" for p, o in zip(points, options)), end="")
        return
    if args.dry_run and not args.slurm:
        for p in points:
            print(f"{p.index}: {run_dir(out, p)}  ({' '.join(p.config)})")
        return
    from lmtune.options.presets import resolve_config_file

    config_file = resolve_config_file(args.config_file)
    # Absolute, so that array tasks and reruns from another directory find it.
    points = save_definition(out, None if config_file is None else str(config_file.resolve()), args.config, grid, options, recipe)
    finished = {p.index for p, o in zip(points, options) if is_finished(run_dir(out, p), o)}
    todo = [p for p in points if p.index not in finished]
    if args.slurm:
        from lmtune.sweep.slurm_array import write_and_submit

        if not todo:
            print(f"lmtune: all {len(points)} points of {out} have finished; nothing to submit.", file=sys.stderr)
            return
        write_and_submit(out, todo, args.sbatch, args.dry_run)
        return
    launcher = shlex.split(args.launcher) if args.launcher else []
    for p in points:
        where = run_dir(out, p)
        if p.index in finished:
            print(f"lmtune: sweep: point {p.index + 1}/{len(points)} {p.name}: finished, skipped", file=sys.stderr)
            continue
        print(f"lmtune: sweep: point {p.index + 1}/{len(points)} {p.name} -> {where}", file=sys.stderr)
        command = [*launcher, sys.executable, "-m", "lmtune", "sweep", str(out), "--point", str(p.index), *(["--verbose"] if args.verbose else [])]
        status = subprocess.run(command).returncode
        if status == 75:
            raise Stopped(f"sweep: point {p.name} was stopped on request after a checkpoint; rerun the same command to resume the sweep.", 75)
        if status != 0:
            raise RunFailed(f"sweep: point {p.name} failed (exit status {status}; its log: {where / 'logs'}); rerun the same command after fixing it: finished points are skipped.")
    print(f"lmtune: sweep {out}: {len(points)} point(s) finished; compare them with `lmtune report {out}`.", file=sys.stderr)


def _run_one(out: Path, args: argparse.Namespace) -> None:
    from lmtune.run_dir import is_main_process
    from lmtune.sweep.points import is_finished, point_options, run_point
    from lmtune.sweep.sweep_dir import load_definition, run_dir

    recipe, config_file, config, points = load_definition(out)
    if args.array_task:
        raw = os.environ.get("SLURM_ARRAY_TASK_ID")
        if raw is None or not raw.isdigit():
            raise UserError(f"--array-task reads its point from SLURM_ARRAY_TASK_ID, which is {'not set' if raw is None else repr(raw)}; it is what the job array in {out / 'sweep.sbatch'} runs.")
        index = int(raw)
    else:
        index = args.point
    if not 0 <= index < len(points):
        raise UserError(f"{out} has points 0 to {len(points) - 1}, not {index}.")
    point = points[index]
    if is_finished(run_dir(out, point), point_options(config_file, config, point, recipe)):
        if is_main_process():
            print(f"lmtune: sweep: point {index} {point.name} has finished; nothing to do.", file=sys.stderr)
        return
    run_point(out, config_file, config, point, verbose=args.verbose, recipe=recipe)
