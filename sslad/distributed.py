"""Data-parallel helpers. Processes come from torchrun (WORLD_SIZE/RANK/LOCAL_RANK and a rendezvous
of its own) or from srun across a SLURM job's nodes (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, with
the first node of SLURM_JOB_NODELIST as the rendezvous host); otherwise everything is local."""

from __future__ import annotations

import os
import re

import torch
import torch.distributed as dist


def pick_device(setting: str, key: str) -> torch.device:
    """``auto`` takes this process's GPU when there is one (torchrun's LOCAL_RANK), else the CPU;
    ``key`` names the config value in the error when ``cuda`` is asked for and absent."""
    if setting == "cpu" or not torch.cuda.is_available():
        if setting == "cuda":
            raise RuntimeError(f"{key} is 'cuda' but no GPU is visible")
        return torch.device("cpu")
    # a site that binds one GPU per task shows each process only its own
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


def first_host(nodelist: str) -> str:
    """The first node of a SLURM node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    head = re.match(r"[^,\[]*(\[[^\]]*\][^,\[]*)*", nodelist).group(0)
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], head)


def slurm_ranks() -> dict[str, str] | None:
    """torch's rendezvous variables for a process that srun started as one of several tasks (None
    otherwise, and under torchrun, which sets its own). The port follows the job id, so that two
    jobs sharing a node do not meet."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return None
    return {"RANK": os.environ["SLURM_PROCID"], "WORLD_SIZE": os.environ["SLURM_NTASKS"],
            "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": first_host(os.environ["SLURM_JOB_NODELIST"]),
            "MASTER_PORT": str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)}


def local_rank() -> int:
    """This process's index on its node (selects its GPU)."""
    env = slurm_ranks() or os.environ
    return int(env.get("LOCAL_RANK", "0"))


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not launched as one of several."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device_type: str) -> tuple[int, int]:
    """Join the process group of torchrun's or srun's processes (NCCL for GPU tensors, gloo on CPUs;
    on GPUs gloo too for the CPU numbers that ``mean`` averages)."""
    os.environ.update(slurm_ranks() or {})
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
    return world()


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order, keeping gradients (contrastive negatives
    come from the whole global batch, so the loss equals the single-process one). Ranks may hold
    different numbers of rows (per-scan terms of subjects with different scan counts): rows are
    padded to the largest count for the collective and the padding dropped after."""
    size = world()[1]
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    rows = [int(c) for c in counts]
    padded = torch.cat([x, x.new_zeros((max(rows) - x.shape[0], *x.shape[1:]))])
    return torch.cat([part[:n] for part, n in zip(all_gather(padded), rows)], dim=0)


def global_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """The mean over the whole global batch of a loss whose terms are split unevenly over ranks, from
    this rank's ``total`` of ``count`` terms. Scaled so that DDP's averaging of gradients (and
    ``mean`` of the logged values) over ranks gives the single-process mean; 0 when no rank has a
    term. Every rank must call it (it is a collective)."""
    size = world()[1]
    if size == 1:
        return total / max(count, 1)
    n = torch.tensor([float(count)], dtype=torch.float64, device=total.device)
    dist.all_reduce(n)
    return total * (size / max(float(n), 1.0))


def mean(value: float) -> float:
    """Average a Python number over ranks (for logging)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world()[1]


def row_offset(count: int, device: torch.device) -> int:
    """How many rows the earlier ranks hold: where this rank's rows start in a ``gather``. Every rank
    must call it (it is a collective)."""
    rank, size = world()
    if size == 1:
        return 0
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([count], device=device))
    return int(sum(int(c) for c in counts[:rank]))
