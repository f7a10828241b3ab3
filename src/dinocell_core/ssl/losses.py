"""The DINOv3 SSL losses, written by hand (no library has Sinkhorn-Knopp centering for these heads).

All of them run in fp32 whatever the compute dtype (bf16 logits at temperature 0.04 lose too much).
Shapes follow the official ``SSLMetaArch``: crops first, then batch: logits ``[crops, B, K]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from dinocell_core.runs.distributed import all_reduce_, is_distributed


def _fp32_over(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` in fp32; from bf16 logits the fp32 copy is divided in place (one [N, K] fp32 buffer
    instead of two at the step's memory peak, which is in the iBOT terms)."""
    return logits / temperature if logits.dtype == torch.float32 else logits.float().div_(temperature)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, n_iterations: int = 3,
                   n_targets: int | None = None) -> torch.Tensor:
    """Teacher targets [N, K] from logits [N, K]: rows are distributions, prototypes used equally over the batch.

    The official iterations (normalise the total, then ``n_iterations`` × (prototype columns → 1/K, sample rows
    → 1/N)) on scaling vectors: the iterates are ``E[n, k]·u[k]·v[n]``, so only a prototype vector ``u`` and a
    sample vector ``v`` are updated, each by one mat-vec product with E (the total and the 1/K, 1/N factors are
    scalars that the last, row-normalising step removes).

    Why not ``exp(logits / T)`` as the official: it overflows fp32 once logits exceed ~3.5 at T = 0.04. Here the
    logits are shifted by their column maxima, then by each row's maximum, before the one exponential:
    E = exp((logits − M[k] − ρ[n]) / T) has every entry ≤ 1 and a 1 in every row and column, whatever the logit
    scale, and ``v`` starts at exp(ρ / T), which undoes the row shift. Even at worst the sums stay within
    [N^-t, max(N, K)^t] after t iterations, which fp32 holds while t·log10(max(N, K)) ≤ 38 (t ≤ 7 at 65,536
    prototypes and 10^5 rows; the recipe runs 3; a sum that overflowed would make the targets non-finite and the
    step skipped); an entry that underflows is < 10^-38 of a term already in its row and column sums.

    Why one exponential: on a CPU the exponentials dominate, and the log-domain iteration (one logsumexp per
    scaling vector) took 2t of them: ~7× this function's CPU time. On a GPU, where it is memory-bound (iBOT:
    N ≈ 11,000 masked patches × K = 65,536), it reads and writes the scores 18 times for t = 3.

    ``n_targets``: the targets of the first rows only (the others, a :class:`TeacherQueue`'s, only shape the
    normalisation; the last step then skips them). Distributed-aware: the column maxima and sums run over every
    rank when a process group with more than one rank exists (ranks may hold different numbers of rows)."""
    if n_iterations < 1:
        raise ValueError(f"Sinkhorn-Knopp needs at least one iteration, got {n_iterations}")
    n, k = logits.shape
    if not is_distributed() and n == 0:
        return logits.new_zeros((0, k), dtype=torch.float32)
    col_max = logits.amax(0).float() if n else logits.new_full((k,), float("-inf"), dtype=torch.float32)
    e = logits - all_reduce_(col_max, "max")  # a new fp32 [N, K] buffer (from bf16 logits too), updated in place
    shift = e.amax(1, keepdim=True).div_(-temperature)  # −ρ/T ≥ 0; 0 for a row that holds a column's maximum
    torch.add(shift, e, alpha=1 / temperature, out=e).exp_()  # E, in two passes
    v = shift.squeeze(1).neg_().exp_()
    for i in range(n_iterations):
        u = all_reduce_(v @ e, "sum").reciprocal_()  # prototypes: equal total weight
        if i < n_iterations - 1:
            v = (e @ u).reciprocal_()  # samples: equal total weight
    e = e[:n_targets]
    rows = e @ u
    return e.mul_(u).div_(rows.unsqueeze(1))  # the last sample step, scaled by N: every row sums to 1


class TeacherQueue:
    """The last ``size`` teacher DINO embeddings of this rank (the head's L2-normalised bottleneck, before the
    prototypes), scored with the *current* prototypes and normalised together with each new batch (SwAV's queue).

    Why a queue: Sinkhorn-Knopp gives every prototype an equal share of the rows it normalises. With fewer rows than
    prototypes (one GPU: 96 rows against 2,048–65,536; the CPU demo: 32 against 128) every row needs prototypes of
    its own, so the two global views of one field never share a target (measured: argmax agreement 0.00) and the
    student cannot beat a uniform guess (loss_dino = ln K). Over a queue of recent rows similar rows share
    prototypes. Why embeddings, not logits: the prototypes move every step, and stored logits would mix scores of
    prototypes that no longer exist; ``score`` (the teacher head's :meth:`~dinocell_core.ssl.heads.DINOHead
    .prototypes`, bound to the live module) re-scores the queue each step. The queued rows only shape the
    normalisation and carry no loss."""

    def __init__(self, size: int, score: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if size < 1:
            raise ValueError(f"the teacher queue needs at least one row, got {size}")
        self.size = int(size)
        self.score = score
        self.rows: torch.Tensor | None = None

    @torch.no_grad()
    def targets(self, logits: torch.Tensor, temperature: float, n_iterations: int = 3) -> torch.Tensor:
        """Targets [N, K] for the current rows, normalised together with the re-scored queue (left unchanged)."""
        rows = logits.detach().float()
        if self.rows is not None:
            queued = self.score(self.rows.to(rows.device)).float()
            rows = torch.cat([rows, queued])
        return sinkhorn_knopp(rows, temperature, n_iterations, n_targets=logits.shape[0])

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor) -> None:
        """A step's teacher embeddings join the queue (newest first; the oldest leave). Only after a finite step:
        one NaN row would poison every later target."""
        rows = embeddings.detach().float()[: self.size]
        keep = 0 if self.rows is None else self.size - rows.shape[0]
        self.rows = torch.cat([rows, self.rows[:keep].to(rows.device)]) if keep > 0 else rows.clone()

    def load(self, rows: torch.Tensor) -> None:
        if rows.ndim != 2:
            raise ValueError(f"teacher queue state must be [rows, dim], got shape {tuple(rows.shape)}")
        self.rows = rows.float()[: self.size].clone()


def dino_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float = 0.1,
              ignore_diagonal: bool = False) -> torch.Tensor:
    """Cross-entropy of every student crop [S, B, K] against every teacher crop [T, B, K], averaged over pairs.

    ``ignore_diagonal`` skips same-crop pairs (student global i vs teacher global i)."""
    s_crops, b, _ = student_logits.shape
    t_crops = teacher_probs.shape[0]
    logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    tp = teacher_probs.float()
    if not ignore_diagonal:
        return -torch.einsum("sbk,tbk->", logp, tp) / (b * s_crops * t_crops)
    pair = -torch.einsum("sbk,tbk->st", logp, tp)
    n_diag = min(s_crops, t_crops)
    off_diagonal = ~torch.eye(s_crops, t_crops, dtype=torch.bool, device=pair.device)
    denom = b * s_crops * t_crops - b * n_diag
    if denom <= 0:
        raise ValueError("the global DINO loss needs at least two global crops")
    return (pair * off_diagonal).sum() / denom


def masked_patch_weights(masks: torch.Tensor) -> torch.Tensor:
    """1/n_masked(image) for every masked patch, in ``masks[image, patch]`` order (the collate computes it on the
    host, so the training step needs no boolean indexing on the device)."""
    m = masks.flatten(1)
    return (1.0 / m.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(m)[m]


def ibot_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor,
              student_temp: float = 0.1, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on masked patches ([M, K] rows, in ``masks[image, patch]`` order); each image weighs
    1/n_masked(image), and the sum is divided by the number of images (masked or not), as the official loss.

    ``weights`` (:func:`masked_patch_weights`, from the loader) avoids counting the masks on the device: without
    it the weights and the row check cost a host sync on a GPU."""
    if weights is None:
        weights = masked_patch_weights(masks)
        if student_logits.shape[0] != weights.shape[0]:
            raise ValueError(f"{student_logits.shape[0]} masked logits for {weights.shape[0]} masked patches")
    x = _fp32_over(student_logits, student_temp)
    return _WeightedSoftCrossEntropy.apply(x, teacher_probs.float(), weights.to(x.dtype)) / masks.shape[0]


class _WeightedSoftCrossEntropy(torch.autograd.Function):
    """−Σ_n w[n]·Σ_k t[n, k]·log_softmax(x[n])[k] for logits x and targets t [M, K], weights w [M]; the gradient
    (softmax(x[n])·Σ_k t[n, k] − t[n])·w[n] is written into the saved log-softmax buffer.

    Why by hand: autograd's chain (log_softmax, then row dots) holds three [M, K] fp32 buffers in backward
    (log-probabilities, their gradient, the logits' gradient; iBOT at batch 48: 3 GB each) and, on a CPU, runs the
    row dots' backward as a batched outer product; this holds one, and takes half the CPU time. The row dots
    (``einsum``) keep the [M, K] product out of memory in forward too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(x, dim=-1)
        ctx.save_for_backward(logp, t, w)
        return -(torch.einsum("nk,nk->n", t, logp) * w).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logp, t, w = ctx.saved_tensors
        c = (grad * w).unsqueeze(1)
        return logp.exp_().mul_(t.sum(-1, keepdim=True) * c).addcmul_(t, c, value=-1), None, None


def koleo_loss(x: torch.Tensor, groups: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: -mean log distance of each L2-normalised vector to its nearest
    neighbour in the batch (spreads the CLS features).

    ``groups`` (int [B]) names the field each sample was cropped from: a sample's neighbour is never a sibling of
    the same field (with ``crops_per_field`` > 1 the nearest neighbour would usually be that near-duplicate, and
    KoLeo would push two views of one field apart). Samples with no neighbour outside their group are left out."""
    if x.shape[0] < 2:
        raise ValueError(f"KoLeo needs at least 2 samples per set, got {x.shape[0]} (raise train.batch_size or set "
                         "loss.koleo_weight=0)")
    x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
    dots = x @ x.t()
    if groups is None:
        dots.fill_diagonal_(-2.0)
        valid = None
    else:
        dots = dots.masked_fill(groups.view(-1, 1) == groups.view(1, -1), -2.0)  # includes the diagonal
        valid = (dots > -2.0).any(dim=1)
    nn_idx = dots.argmax(dim=1)
    dist = F.pairwise_distance(x, x[nn_idx], p=2, eps=eps)
    logd = torch.log(dist + eps)
    if valid is None:
        return -logd.mean()
    # no host sync: the config guarantees ≥ 2 fields per batch (train.batch_size > data.crops_per_field)
    return -(logd * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the rows of ``probs``."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(-1).mean()
