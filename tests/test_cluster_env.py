"""SLURM variables as srun really sets them -> torch.distributed's variables."""

from __future__ import annotations

import pytest

from lmtune.errors import UserError
from lmtune.launch import (
    expand_nodelist,
    expand_tasks_per_node,
    prepare_distributed_env,
    torch_env_from_slurm,
)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node07", ["node07"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("gpu-a[1-2],gpu-b3", ["gpu-a1", "gpu-a2", "gpu-b3"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("a[001-002],b,c[9]", ["a001", "a002", "b", "c9"]),
        # as `scontrol show hostnames` prints them: several bracket groups in one name, padding, mixed lists
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("cn[009-011]", ["cn009", "cn010", "cn011"]),
        ("nid[00001-00002,00010]", ["nid00001", "nid00002", "nid00010"]),
        ("a1,b[2-3]", ["a1", "b2", "b3"]),
        ("dgx-[1-2]-gpu,login1", ["dgx-1-gpu", "dgx-2-gpu", "login1"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("value, counts", [("8", [8]), ("8(x2)", [8, 8]), ("4,2", [4, 2]), ("2(x3),1", [2, 2, 2, 1])])
def test_expand_tasks_per_node(value: str, counts: list[int]) -> None:
    assert expand_tasks_per_node(value) == counts


@pytest.mark.parametrize("value", ["x", "2(x", "", "0"])
def test_malformed_tasks_per_node_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        expand_tasks_per_node(value)


def test_master_addr_from_a_nodelist_with_two_bracket_groups() -> None:
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "rack[1-2]-node[01-02]", "SLURM_TASKS_PER_NODE": "1(x4)"}
    assert torch_env_from_slurm(env)["MASTER_ADDR"] == "rack1-node01"  # type: ignore[index]


def test_malformed_nodelist_is_one_sentence() -> None:
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "node[1-", "SLURM_TASKS_PER_NODE": "1"}
    with pytest.raises(UserError, match=r"SLURM_JOB_NODELIST='node\[1-' is not a SLURM host list"):
        torch_env_from_slurm(env)


def srun_env(**over: str) -> dict[str, str]:
    """What `srun --nodes=2 --ntasks=12` sets for the second task on the second node (no --ntasks-per-node)."""
    env = {
        "SLURM_PROCID": "9", "SLURM_NTASKS": "12", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_TASKS_PER_NODE": "8,4",
    }
    env.update(over)
    return env


def test_srun_variables_without_ntasks_per_node_or_scontrol() -> None:
    assert torch_env_from_slurm(srun_env()) == {
        "RANK": "9", "WORLD_SIZE": "12", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
        "MASTER_ADDR": "gpu-a07", "MASTER_PORT": str(20000 + 4242),
    }


def test_master_addr_and_port_can_be_overridden() -> None:
    env = torch_env_from_slurm(srun_env(MASTER_ADDR="10.1.2.3", MASTER_PORT="1234"))
    assert env is not None and (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.1.2.3", "1234")


def test_torchrun_variables_win_over_slurm() -> None:
    env = srun_env(RANK="3", WORLD_SIZE="4", LOCAL_RANK="3", LOCAL_WORLD_SIZE="4", MASTER_ADDR="h", MASTER_PORT="5")
    assert torch_env_from_slurm(env) is None
    assert prepare_distributed_env(env) == "torchrun" and env["RANK"] == "3"


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"SLURM_TASKS_PER_NODE": "8(x2)"}, "adds up to 16 tasks but SLURM_NTASKS=12"),
        ({"SLURM_LOCALID": "5"}, "SLURM_LOCALID=5 is not below the 4 task(s) on node 1"),
        ({"SLURM_TASKS_PER_NODE": "eight"}, "not in SLURM's form"),
        ({"SLURM_NTASKS": "x"}, "SLURM_NTASKS='x' is not a non-negative integer"),
        ({"SLURM_NODEID": "2"}, "describes 2 node(s)"),
    ],
)
def test_inconsistent_environment_names_the_variable(over: dict[str, str], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        torch_env_from_slurm(srun_env(**over))


def test_missing_variables_are_named() -> None:
    env = srun_env()
    del env["SLURM_TASKS_PER_NODE"]
    with pytest.raises(UserError, match="SLURM_TASKS_PER_NODE is not"):
        torch_env_from_slurm(env)
    with pytest.raises(UserError, match="WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not"):
        prepare_distributed_env({"RANK": "0"})


def test_no_launcher() -> None:
    env: dict[str, str] = {}
    assert prepare_distributed_env(env) == "none" and env == {}


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow  # each waits for a connection to fail
@pytest.mark.parametrize(
    "nodelist, rank, reason",
    [
        # srun: the first host of the nodelist is MASTER_ADDR
        ("nohost.invalid,localhost", "0", "the name nohost.invalid does not resolve (check MASTER_ADDR, or the first host of SLURM_JOB_NODELIST)."),
        ("127.0.0.1,localhost", "1", "127.0.0.1 resolves but nothing answered on port {port} (rank 0 has not started there, or a firewall blocks the port)."),
        # (Rank 0 failing to reach a host that resolves would need an address off this machine: tests send no
        # traffic beyond loopback, so that branch is checked on the explanation alone below.)
    ],
)
def test_unreachable_rendezvous_is_named(monkeypatch: pytest.MonkeyPatch, nodelist: str, rank: str, reason: str) -> None:
    """The real error fairseq2 raises when MASTER_ADDR:MASTER_PORT does not answer, explained in one sentence."""
    from datetime import timedelta

    from fairseq2.device import CPU
    from fairseq2.gang import ProcessGroupGang

    from lmtune.launch import explain_distributed_failure

    port = _closed_port()
    slurm = {
        "SLURM_PROCID": rank, "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": rank,
        "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_NODELIST": nodelist, "MASTER_PORT": port,
    }
    env = torch_env_from_slurm(slurm)
    assert env is not None and env["MASTER_ADDR"] == nodelist.split(",")[0]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(Exception) as failure:
        ProcessGroupGang.create_default_process_group(CPU, timeout=timedelta(seconds=2))
    message = explain_distributed_failure(failure.value, env)
    addr = env["MASTER_ADDR"]
    expected = f"rank {rank} could not reach the rendezvous at MASTER_ADDR:MASTER_PORT = {addr}:{port} within 2 s: {reason.format(port=port)}"
    assert message == expected


def test_rank0_that_cannot_reach_a_resolving_master_addr_is_told_it_is_not_its_host() -> None:
    from lmtune.launch import explain_distributed_failure

    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": _closed_port()}
    failure = RuntimeError("The client socket has timed out after 60000ms while trying to connect to (localhost, 29500).")
    message = explain_distributed_failure(failure, env)
    assert message is not None and message.endswith("(MASTER_ADDR is not the host rank 0 runs on)."), message
