"""Distributed launch: torchrun's variables, or SLURM's as srun really sets them.

fairseq2 0.8.1 (through clusterscope) needs `scontrol` or MASTER_ADDR and takes
the local world size from SLURM_NTASKS_PER_NODE, which srun sets only with
--ntasks-per-node; without it one rank fails and another hangs. lmtune derives
torch.distributed's variables from what srun always sets, and tells fairseq2
not to detect the cluster again. torchrun's variables win when both are present
(``srun torchrun ...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

from lmtune.errors import UserError

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ('node[01-04,07]', 'rack[1-2]-node[01-02]') -> host names, as scontrol expands it."""
    import hostlist

    try:
        return hostlist.expand_hostlist(nodelist)
    except (hostlist.BadHostlist, ValueError):  # python-hostlist raises either on malformed input
        raise ValueError(nodelist) from None


def expand_tasks_per_node(value: str) -> list[int]:
    """SLURM_TASKS_PER_NODE: '8', '8(x2)', '4,2', '2(x3),1' -> tasks on each node."""
    import hostlist

    try:
        counts = hostlist.parse_slurm_tasks_per_node(value)
    except (hostlist.BadHostlist, ValueError):  # python-hostlist raises either on malformed input
        raise ValueError(value) from None
    if not counts or any(c < 1 for c in counts):
        raise ValueError(value)
    return counts


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        raise UserError(f"SLURM_PROCID is set but {name} is not; run lmtune under srun, or set RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT as torchrun does.")
    if not value.isdigit():
        raise UserError(f"{name}={value!r} is not a non-negative integer.")
    return int(value)


def torch_env_from_slurm(env: Mapping[str, str]) -> dict[str, str] | None:
    """The torch.distributed variables for an srun task, or None outside SLURM or under torchrun."""
    if "SLURM_PROCID" not in env or "RANK" in env:
        return None
    rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    local_rank, node = _int(env, "SLURM_LOCALID"), _int(env, "SLURM_NODEID")
    raw_tasks = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_STEP_TASKS_PER_NODE")
    if raw_tasks is None:
        raise UserError("SLURM_PROCID is set but SLURM_TASKS_PER_NODE is not; lmtune needs it to know each node's number of tasks.")
    try:
        per_node = expand_tasks_per_node(raw_tasks)
    except ValueError:
        raise UserError(f"SLURM_TASKS_PER_NODE={raw_tasks!r} is not in SLURM's form (e.g. '8', '8(x2)', '4,2').") from None
    if sum(per_node) != world:
        raise UserError(f"SLURM_TASKS_PER_NODE={raw_tasks!r} adds up to {sum(per_node)} tasks but SLURM_NTASKS={world}.")
    if node >= len(per_node):
        raise UserError(f"SLURM_NODEID={node} but SLURM_TASKS_PER_NODE={raw_tasks!r} describes {len(per_node)} node(s).")
    if rank >= world:
        raise UserError(f"SLURM_PROCID={rank} is not below SLURM_NTASKS={world}.")
    if local_rank >= per_node[node]:
        raise UserError(f"SLURM_LOCALID={local_rank} is not below the {per_node[node]} task(s) on node {node} (SLURM_TASKS_PER_NODE={raw_tasks!r}).")

    master_addr = env.get("MASTER_ADDR")
    if not master_addr:
        raw_nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not raw_nodes:
            raise UserError("neither MASTER_ADDR nor SLURM_JOB_NODELIST is set, so the rank-0 host is unknown.")
        try:
            master_addr = expand_nodelist(raw_nodes)[0]
        except (ValueError, IndexError):
            raise UserError(f"SLURM_JOB_NODELIST={raw_nodes!r} is not a SLURM host list (e.g. 'node[01-04,07]').") from None
    master_port = env.get("MASTER_PORT")
    if not master_port:
        job_id = env.get("SLURM_JOB_ID", "0")
        # Same on every task of the job, different for jobs sharing a node.
        master_port = str(20000 + int(job_id) % 20000) if job_id.isdigit() else "29500"
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(per_node[node]),
        "GROUP_RANK": str(node),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": master_port,
    }


def prepare_distributed_env(environ: MutableMapping[str, str]) -> str:
    """Sets torch.distributed's variables in ``environ``; returns the launcher's name."""
    slurm = torch_env_from_slurm(environ)
    if slurm is not None:
        environ.update(slurm)
        return "slurm"
    if "RANK" in environ:
        missing = [v for v in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in environ]
        if missing:
            raise UserError(f"RANK is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; launch with torchrun or srun, or unset RANK.")
        environ.setdefault("LOCAL_RANK", environ["RANK"])  # one node, as a hand-set launch would be
        environ.setdefault("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])
        return "torchrun"
    return "none"


# torch's TCPStore client (c10d), as rank 0 and the others raise it when MASTER_ADDR:MASTER_PORT does not answer.
RENDEZVOUS_UNREACHED = re.compile(r"timed out after (\d+)ms while trying to connect to \((.+?), (\d+)\)")


def _rendezvous_unreached(rank: str, addr: str, port: str, seconds: float) -> str:
    """Says whether the rendezvous host's name did not resolve or nothing answered there."""
    import socket

    try:
        socket.getaddrinfo(addr, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        why = f"the name {addr} does not resolve (check MASTER_ADDR, or the first host of SLURM_JOB_NODELIST)"
    else:
        # Rank 0 listens on its own host: when it cannot reach MASTER_ADDR itself, that names another host.
        hint = "MASTER_ADDR is not the host rank 0 runs on" if rank == "0" else "rank 0 has not started there, or a firewall blocks the port"
        why = f"{addr} resolves but nothing answered on port {port} ({hint})"
    return f"rank {rank} could not reach the rendezvous at MASTER_ADDR:MASTER_PORT = {addr}:{port} within {seconds:g} s: {why}."


PEER_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "DistBackendError", "timed out", "Timed out", "clients joined")


def explain_distributed_failure(ex: BaseException, environ: Mapping[str, str]) -> str | None:
    """One sentence for a failure caused by another rank, or None when it is not one."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return None
    text = f"{type(ex).__name__}: {ex}"
    cause = ex.__cause__
    while cause is not None:
        text += f" {type(cause).__name__}: {cause}"
        cause = cause.__cause__
    if not any(marker in text for marker in PEER_FAILURE_MARKERS):
        return None
    rank = environ.get("RANK", "?")
    unreached = RENDEZVOUS_UNREACHED.search(text)
    if unreached is not None:
        return _rendezvous_unreached(rank, unreached.group(2), unreached.group(3), int(unreached.group(1)) / 1000)
    first = text.strip().splitlines()[0][:200]
    if "clients joined" in text or "waiting for clients" in text:
        return f"rank {rank} waited for the other ranks to join at {environ.get('MASTER_ADDR')}:{environ.get('MASTER_PORT')} and not all {world} did ({first}); check that every rank was started and can reach that address."
    return f"rank {rank} of {world} lost contact with another rank ({first}); a peer process died or its node failed, see OUT/logs/rank_*.log."
