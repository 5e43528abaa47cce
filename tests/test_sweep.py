"""`lmtune sweep`: every point of a grid trains exactly as `lmtune instruction_finetune` with
those values would, into OUT/runs/<name>; reruns skip finished points and resume the rest;
`--slurm` writes (and submits) a job array whose tasks find their point in
SLURM_ARRAY_TASK_ID. No SLURM installation: fake `sbatch` and `srun` stand in on PATH.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import assert_user_error, losses, run_lmtune, run_lmtune_in_process

BASE = ["--config-file", "tiny_gsm8k", "--config", "max_num_steps=3", "checkpoint_every_n_steps=3", "publish_metrics_every_n_steps=1", "tensorboard=false", "max_num_tokens=1024"]
GRID = ["--grid", "learning_rate=1e-4,3e-4", "seed=1,2"]
NAMES = ["learning_rate=1e-4,seed=1", "learning_rate=1e-4,seed=2", "learning_rate=3e-4,seed=1", "learning_rate=3e-4,seed=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    # In this process (each point is its own process, started by sweep), on one thread as run_lmtune's would be.
    result = run_lmtune_in_process("sweep", str(out), *BASE, *GRID, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_each_point_trains_as_instruction_finetune_would(sweep: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out, _ = sweep
    assert sorted(p.name for p in (out / "runs").iterdir()) == NAMES
    for name in NAMES:
        config = yaml.safe_load((out / "runs" / name / "lmtune.yaml").read_text())
        lr, seed = name.split(",")
        assert config["learning_rate"] == float(lr.split("=")[1]) and config["seed"] == int(seed.split("=")[1])
        assert sorted(losses(out / "runs" / name)) == [1, 2, 3]
    direct = tmp_path / "direct"
    r = run_lmtune_in_process("instruction_finetune", str(direct), *BASE, "learning_rate=3e-4", "seed=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(direct) == losses(out / "runs" / NAMES[3])
    # The values matter: another seed or learning rate trains another model.
    assert losses(out / "runs" / NAMES[2]) != losses(out / "runs" / NAMES[3]) != losses(out / "runs" / NAMES[1])
    definition = yaml.safe_load((out / "sweep.yaml").read_text())
    assert [r["name"] for r in definition["runs"]] == NAMES
    assert definition["runs"][3]["overrides"] == {"learning_rate": 3e-4, "seed": 2}


@pytest.mark.slow
def test_a_rerun_skips_finished_points_and_resumes_the_others(sweep: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sweep[0], out)
    again = run_lmtune("sweep", str(out), *BASE, *GRID)
    assert again.returncode == 0 and again.stderr.count("finished, skipped") == 4
    before = losses(out / "runs" / NAMES[0])

    longer = run_lmtune("sweep", str(out), *BASE, "max_num_steps=5", *GRID)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert longer.stderr.count("max_num_steps 3 -> 5") == 4  # each point resumed from its checkpoint
    after = losses(out / "runs" / NAMES[0])
    assert sorted(after) == [1, 2, 3, 4, 5] and all(after[s] == before[s] for s in before)


def _fake_tools(bin_dir: Path) -> Path:
    """sbatch records its arguments; srun runs its command in this process, as a one-task step would."""
    bin_dir.mkdir()
    log = bin_dir / "sbatch.calls"
    for name, body in {
        "sbatch": f'echo "$@" >> {log}\necho "Submitted batch job 4242"\n',
        "srun": 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    }.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return log


@pytest.mark.slow
def test_slurm_writes_and_submits_a_job_array_of_the_unfinished_points(sweep: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sweep[0], out)
    shutil.rmtree(out / "runs" / NAMES[1])  # one point left to do
    dry = run_lmtune_in_process("sweep", str(out), *BASE, *GRID, "--slurm", "--dry-run", "--sbatch", "gpus-per-node=8", "time=04:00:00")
    assert dry.returncode == 0, dry.stderr[-3000:]
    script = dry.stdout
    for line in ("#SBATCH --array=1", "#SBATCH --gpus-per-node=8", "#SBATCH --time=04:00:00", "#SBATCH --signal=USR1@120", "#SBATCH --requeue",
                 f"-m lmtune sweep {out.resolve()} --array-task", 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"'):  # fmt: skip
        assert line in script, line
    assert not (out / "sweep.sbatch").exists()

    log = _fake_tools(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    submitted = run_lmtune("sweep", str(out), *BASE, *GRID, "--slurm", env=env)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert log.read_text().split() == [str(out / "sweep.sbatch")] and "Submitted batch job 4242" in submitted.stderr
    assert (out / "sweep.sbatch").read_text() == script.replace("#SBATCH --gpus-per-node=8\n#SBATCH --time=04:00:00\n", "")

    # The array task, as SLURM runs the script: srun runs `lmtune sweep OUT --array-task` with the task id set.
    task_env = {
        **env, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_JOB_ID": "4243", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "1",
        "OMP_NUM_THREADS": "1",  # as the fixture's run had (run_lmtune): another thread count sums in another order
    }  # fmt: skip
    task = subprocess.run(["bash", str(out / "sweep.sbatch")], env=task_env, capture_output=True, text=True, timeout=600)
    assert task.returncode == 0, task.stderr[-3000:]
    assert losses(out / "runs" / NAMES[1]) == losses(sweep[0] / "runs" / NAMES[1])  # the same point, trained the same
    again = run_lmtune("sweep", str(out), "--array-task", env=task_env)
    assert again.returncode == 0 and "has finished; nothing to do" in again.stderr
    nothing = run_lmtune_in_process("sweep", str(out), *BASE, *GRID, "--slurm", env=env)
    assert "nothing to submit" in nothing.stderr and log.read_text().count("\n") == 1


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("grid,fragments", [
    (["learning_rate"], ["--grid 'learning_rate' is not of the form key=value1,value2"]),
    (["learnig_rate=1e-4,2e-4"], ["unknown config key 'learnig_rate'", "learning_rate"]),
    (["dataset=a/b,c"], ["value 'a/b' cannot be part of a run's folder name"]),
    (["seed=1,1"], ["--grid seed lists a value twice"]),
    (["learning_rate=fast"], ["learning_rate"]),
])  # fmt: skip
def test_bad_grids_fail_before_anything_runs(tmp_path: Path, grid: list[str], fragments: list[str]) -> None:
    out = tmp_path / "out"
    assert_user_error(run_lmtune_in_process("sweep", str(out), *BASE, "--grid", *grid), *fragments)
    assert not out.exists()


@pytest.mark.slow
def test_another_grid_on_the_same_out_is_refused(sweep: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out = sweep[0]
    before = (out / "sweep.yaml").read_text()
    r = run_lmtune_in_process("sweep", str(out), *BASE, "--grid", "seed=7,8")
    assert_user_error(r, "holds a sweep over learning_rate=1e-4,3e-4 x seed=1,2", "new OUT")
    assert (out / "sweep.yaml").read_text() == before


@pytest.mark.slow
def test_array_task_without_its_id(sweep: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    assert_user_error(run_lmtune("sweep", str(sweep[0]), "--array-task", env=env), "SLURM_ARRAY_TASK_ID, which is not set")
    assert_user_error(run_lmtune("sweep", str(sweep[0]), "--array-task", env={**env, "SLURM_ARRAY_TASK_ID": "9"}), "has points 0 to 3, not 9")


def test_out_may_follow_the_grid(tmp_path: Path) -> None:
    r = run_lmtune_in_process("sweep", *BASE, "--grid", "seed=1,2", str(tmp_path / "out"), "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"0: {tmp_path / 'out' / 'runs' / 'seed=1'}" in r.stdout and "1: " in r.stdout


def test_a_sweep_runs_the_verb_its_recipe_names_and_keeps_to_it(tmp_path: Path) -> None:
    from lmtune.sweep.grid import grid_points
    from lmtune.sweep.points import point_options
    from lmtune.sweep.sweep_dir import load_definition, save_definition

    out = tmp_path / "out"
    bad = run_lmtune_in_process("sweep", str(out), "--recipe", "pretrain", "--grid", "seed=1,2")
    assert_user_error(bad, "--recipe 'pretrain' is not a verb a sweep runs", "instruction_finetune, preference_finetune")
    # preference_finetune's keys: criterion.beta is one, and an instruction_finetune sweep does not know it.
    dump = run_lmtune_in_process("sweep", str(out), "--recipe", "preference_finetune", "--grid", "criterion.beta=0.1,0.5", "--dump-config")
    assert dump.returncode == 0, dump.stderr
    points = [yaml.safe_load(part) for part in dump.stdout.split("---\n")]
    assert [p["criterion"]["beta"] for p in points] == [0.1, 0.5] and all(p["criterion"]["name"] == "dpo" for p in points)
    assert_user_error(run_lmtune_in_process("sweep", str(out), "--grid", "criterion.beta=0.1,0.5", "--dump-config"), "unknown config key 'criterion'")
    assert not out.exists()
    # The definition records the verb, which the points (--point, --array-task) run; another verb on the same OUT is refused.
    grid = {"seed": ["1", "2"]}
    save_definition(out, None, [], grid, [point_options(None, [], p, "preference_finetune") for p in grid_points(grid)], "preference_finetune")
    recipe, _, _, loaded = load_definition(out)
    assert recipe == "preference_finetune" and [p.name for p in loaded] == ["seed=1", "seed=2"]
    before = (out / "sweep.yaml").read_text()
    assert_user_error(run_lmtune_in_process("sweep", str(out), "--grid", "seed=1,2"), "holds a sweep of preference_finetune, not instruction_finetune", "--recipe")
    assert (out / "sweep.yaml").read_text() == before
    # A definition from before --recipe existed is instruction_finetune's.
    old = yaml.safe_load(before)
    del old["recipe"]
    (out / "sweep.yaml").write_text(yaml.safe_dump(old))
    assert load_definition(out)[0] == "instruction_finetune"
