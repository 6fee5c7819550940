"""DINO on axial slices (BrainDINO's route): self-distillation with no labels (Caron et al. 2021,
arXiv 2104.14294) of a 2D encoder on slices of the model-ready arrays, handed to fine-tuning as a
:class:`sslad.networks.SliceEncoder` (slice features pooled over the brain's axial slices).

Each step takes the batch's scans (one augmented view of each, ``augment``'s 3D recipe), picks
``slices_per_scan`` random brain slices of each (the encoder's pooling rule says which are brain) and
cuts every slice into DINO's multi-crop: 2 global crops (``global_scale`` of its area, resized to
the slice's size) and ``local_crops`` local ones (``local_scale``, resized to ``local_size`` of each
side), each flipped left-right with p 0.5 and with brightness and contrast jittered (``jitter``,
p 0.8: DINO's colour jitter on one channel). The student (encoder + head) sees every crop, the
teacher (the same network, an exponential moving average of the student, never trained by
gradients) the global ones; the loss is the cross-entropy between the teacher's centred, sharpened
distribution of one global crop and the student's of every other crop. Teacher temperature rises
linearly from ``teacher_temperature[0]`` to ``[1]`` over the first ``teacher_warmup`` of the run, the
teacher's momentum follows a cosine from ``momentum[0]`` to ``[1]`` and the centre is an EMA
(``center_momentum``) of the teacher's outputs over the global batch: centring stops one dimension
from dominating, sharpening stops the uniform collapse. Both need a teacher that moves: its EMA
horizon, 1 / (1 - momentum) steps, must be well under the run's length. 0.996 suits DINO's 10^5
steps but not the demo's ~300; there the teacher stays near its random start and its targets stay
near uniform, with the loss at log ``out_dim`` (docs/methods.md).

The teacher's EMA update comes at the start of each step, from the student as the previous step's
optimiser left it: DINO's update after the optimiser step, done where the method runs (the generic
loop owns the optimiser). The teacher and the centre are part of the module, so checkpoints carry
them and a resumed run continues exactly. Fine-tuning receives the student's encoder, the one the
optimiser trained. Every random draw is a rank's rows of one draw for the global batch
(:func:`sslad.methods.step_draw`), as for the other methods. No installed library provides the DINO
loss (MONAI has no DINO), so it is written here after the paper's pseudocode and reference code;
the teacher's update is one ``lerp_`` per parameter.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather
from sslad.methods import Batch, Sampling, step_draw
from sslad.networks import SliceEncoder

N_GLOBAL = 2        # DINO's two global crops, the teacher's inputs
ASPECT = (3 / 4, 4 / 3)  # aspect ratios of a random resized crop (torchvision's, as DINO uses)
P_JITTER = 0.8      # DINO's colour-jitter probability


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU; batch norm after the hidden layers with
    ``batch_norm``, DINO's ``use_bn_in_head``) to an L2-normalised bottleneck, then a linear map with
    unit-norm weight rows (DINO's weight-normalised last layer, its norm fixed at 1) to out_dim logits."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, out_dim: int, batch_norm: bool) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden)) if batch_norm else nn.Identity
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), norm(), nn.GELU(),
                                 nn.Linear(hidden, hidden), norm(), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's initialisation
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(h), dim=-1)
        return F.linear(z, F.normalize(self.last.weight, dim=1))


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """Mean over every (teacher crop i, student crop j != i) of H(P_t(i), P_s(j)): P_t the softmax of
    the teacher's centred logits at the teacher temperature, P_s the student's softmax at its own.
    ``student[i]`` and ``teacher[i]`` are the same global crops; the student's further crops follow."""
    targets = [F.softmax((t.float() - center) / teacher_temperature, dim=-1) for t in teacher]
    logs = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student]
    terms = [-(q * logs[j]).sum(-1).mean() for i, q in enumerate(targets) for j in range(len(logs)) if j != i]
    return torch.stack(terms).mean()


def cosine_momentum(progress: float, start: float, end: float) -> float:
    """DINO's teacher momentum: ``start`` at the first step, ``end`` at the last, a half cosine between."""
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def warmup_temperature(progress: float, start: float, end: float, warmup: float) -> float:
    """DINO's teacher temperature: linear from ``start`` to ``end`` over the first ``warmup`` of the run."""
    return end if progress >= warmup else start + (end - start) * progress / warmup


def crop(slices: torch.Tensor, u: torch.Tensor, scale: tuple[float, float], size: tuple[int, int],
         jitter: float) -> torch.Tensor:
    """A random resized crop of each slice (M, 1, X, Y) -> (M, 1, *size): area ``scale`` of the
    slice, aspect in ASPECT, flipped along X (left-right) with p 0.5, brightness and contrast
    jittered by up to ``jitter`` with p P_JITTER, background left at 0. ``u`` (M, 8): its uniform draws."""
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = torch.exp(math.log(ASPECT[0]) + (math.log(ASPECT[1]) - math.log(ASPECT[0])) * u[:, 1])
    sx, sy = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    cx, cy = (2 * u[:, 2] - 1) * (1 - sx), (2 * u[:, 3] - 1) * (1 - sy)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(sx)
    # grid components are (W, H) = (Y, X) of the slice
    theta = torch.stack([torch.stack([sy, zero, cy], 1), torch.stack([zero, sx * flip, cx], 1)], 1)
    grid = F.affine_grid(theta.to(slices.device), [len(slices), 1, *size], align_corners=False)
    out = F.grid_sample(slices.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    on = (u[:, 5] < P_JITTER).to(out.device).view(-1, 1, 1, 1)
    contrast, brightness = (1 + jitter * (2 * u[:, 6] - 1), jitter * (2 * u[:, 7] - 1))
    jittered = out * contrast.to(out.device).view(-1, 1, 1, 1) + brightness.to(out.device).view(-1, 1, 1, 1)
    return torch.where(on & (out != 0), jittered, out)


class DINO2D(nn.Module):
    sampling = Sampling(seq_len=1, min_scans=1, views=("augment",))

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        if not isinstance(encoder, SliceEncoder):
            raise ValueError("dino2d trains a slice encoder: its settings need a slice_encoder block")
        self.encoder = encoder
        self.head = DINOHead(dim, hp["hidden"], hp["bottleneck"], hp["out_dim"], hp["head_batch_norm"])
        self.teacher = nn.ModuleDict({"net": copy.deepcopy(encoder.net), "head": copy.deepcopy(self.head)})
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(hp["out_dim"]))
        self.hp = hp

    def student_params(self) -> list[torch.Tensor]:
        """The student's parameters in the teacher's order (net, head)."""
        return [*self.encoder.net.parameters(), *self.head.parameters()]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum x teacher + (1 - momentum) x student, parameter by parameter (a
        batch-norm teacher normalises by its batch, in training mode as the student)."""
        for t, s in zip(self.teacher.parameters(), self.student_params()):
            t.lerp_(s, 1 - momentum)

    def multi_crop(self, batch: Batch) -> list[torch.Tensor]:
        """The crops of ``slices_per_scan`` brain slices of every scan: N_GLOBAL global crops, then
        the local ones, each (N x slices_per_scan, 1, ., .)."""
        hp = self.hp
        x = apply(batch.volumes, batch.views[0])
        n, z = x.shape[0], x.shape[-1]
        # random brain slices: the top ones of a uniform draw, brain slices lifted above the others
        score = step_draw(batch, (n, z)) + self.encoder.brain_slices(x).float()
        chosen = score.topk(min(hp["slices_per_scan"], z), dim=1).indices
        rows = torch.arange(n, device=x.device).unsqueeze(1)
        slices = SliceEncoder.axial(x).view(n, z, 1, *x.shape[2:4])[rows, chosen].flatten(0, 1)
        n_crops = N_GLOBAL + hp["local_crops"]
        u = step_draw(batch, (n, chosen.shape[1] * n_crops * 8)).view(len(slices), n_crops, 8).cpu()
        side = x.shape[2:4]
        local = tuple(max(1, round(hp["local_size"] * s)) for s in side)
        return [crop(slices, u[:, c], tuple(hp["global_scale"] if c < N_GLOBAL else hp["local_scale"]),
                     side if c < N_GLOBAL else local, hp["jitter"]) for c in range(n_crops)]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hp
        momentum = cosine_momentum(batch.progress, *hp["momentum"])
        temperature = warmup_temperature(batch.progress, *hp["teacher_temperature"], hp["teacher_warmup"])
        self.update_teacher(momentum)
        crops = self.multi_crop(batch)
        m = len(crops[0])
        with torch.no_grad():
            teacher = self.teacher["head"](self.teacher["net"](torch.cat(crops[:N_GLOBAL]))).split(m)
        # one pass per crop size, as DINO does
        student = [*self.head(self.encoder.net(torch.cat(crops[:N_GLOBAL]))).split(m)]
        if len(crops) > N_GLOBAL:
            student += self.head(self.encoder.net(torch.cat(crops[N_GLOBAL:]))).split(m)
        loss = dino_loss(student, list(teacher), self.center, hp["student_temperature"], temperature)
        with torch.no_grad():
            out = torch.cat(teacher).float()
            p = F.softmax((out - self.center) / temperature, dim=-1)  # the targets (collapse: 0 or log out_dim)
            entropy = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
            self.center.lerp_(gather(out).mean(0), 1 - hp["center_momentum"])
        return loss, {"teacher_entropy": entropy, "momentum": momentum}
