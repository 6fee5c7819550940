"""sslad's Adam against torch's: the same update, bit for bit, with and without weight decay."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from sslad.optim import Adam


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch(weight_decay):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    frozen = torch.nn.Linear(5, 1)  # never gets a gradient: no update, no state, as in torch
    ref, ref_frozen = copy.deepcopy(net), copy.deepcopy(frozen)
    ours = Adam([*net.parameters(), *frozen.parameters()], lr=0.01, weight_decay=weight_decay)
    theirs = torch.optim.Adam([*ref.parameters(), *ref_frozen.parameters()], lr=0.01, weight_decay=weight_decay,
                              foreach=False)
    x = torch.randn(16, 5)
    for _ in range(25):
        for model, opt in ((net, ours), (ref, theirs)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip([*net.parameters(), *frozen.parameters()], [*ref.parameters(), *ref_frozen.parameters()]):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not any(p.grad is not None for p in frozen.parameters())


def test_adam_step_does_not_load_dynamo():
    import subprocess

    code = ("import sys, torch; from sslad.optim import Adam; p = torch.nn.Parameter(torch.ones(3)); "
            "o = Adam([p], lr=0.1); p.sum().backward(); o.step(); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
