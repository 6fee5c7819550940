"""Processes started by srun: ranks and rendezvous from SLURM's variables (tests/slurm/run.sh runs
the same under a real SLURM)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from test_pretrain import assert_trains_as_one_process, manifest, probe_cmd, probe_settings  # noqa: F401 (a fixture)

from sslad import distributed


@pytest.mark.parametrize("nodelist, first", [("gpu[07-09,12],cpu1", "gpu07"), ("node1,node2", "node1"),
                                             ("rack[1-2]-node[04-05]", "rack1-node04"), ("localhost", "localhost")])
def test_first_host_of_a_slurm_nodelist(nodelist, first):
    assert distributed.first_host(nodelist) == first


def test_slurm_ranks_only_for_several_tasks_and_never_under_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.slurm_ranks() is None  # one task: a plain process
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[02-03]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert distributed.slurm_ranks() == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu02",
                                         "MASTER_PORT": "23456"}
    assert distributed.local_rank() == 1
    monkeypatch.setenv("RANK", "0")  # torchrun's own variables win
    assert distributed.slurm_ranks() is None


def test_two_srun_style_ranks_match_the_single_process_run(manifest, tmp_path):  # noqa: F811
    """Two processes that know only what srun tells them (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
    SLURM_JOB_NODELIST) train as one, by the data-parallel criterion of tests/test_pretrain.py (the
    first steps' gradients, every step's loss at a learning rate too small for noise to grow)."""
    runs = {"topc": probe_settings("topc", epochs=2)}
    subprocess.run(probe_cmd(runs, manifest, tmp_path / "single"), check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=str(os.getpid()))
    cmd = probe_cmd(runs, manifest, tmp_path / "ranks")
    procs = [subprocess.Popen(cmd, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
    one, two = (torch.load(tmp_path / side / "probe.pt", weights_only=True) for side in ("single", "ranks"))
    assert one["topc"]["world_size"] == 1 and two["topc"]["world_size"] == 2
    assert_trains_as_one_process(one, two)
