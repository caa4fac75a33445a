"""Cross-process negatives in the contrastive loss (open_clip's gather_features): two CPU processes with the gloo
backend give the loss of the global batch, gradients for their own rows, and agree on which modality pairs to
score even when one rank's batch lacks a modality (no collective left waiting)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raretarget.encoders.base import normalize
from raretarget.encoders.model import clip_loss, global_count, multimodal_loss


def _data():
    g = torch.Generator().manual_seed(0)
    a = normalize(torch.randn(7, 8, generator=g))
    b = normalize(torch.randn(7, 8, generator=g))
    return a, b


def _split(rank):
    return (slice(0, 3), slice(3, 7))[rank]          # ranks hold different numbers of rows


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        a, b = _data()
        sl = _split(rank)
        xa = a[sl].clone().requires_grad_(True)
        xb = b[sl].clone()
        loss = clip_loss(xa, xb, 10.0)
        loss.backward()
        # a batch of 2 patients on each rank; rank 1 has no "image" rows
        embs = {"note": a[2 * rank:2 * rank + 2], "labs": b[2 * rank:2 * rank + 2]}
        index = {"note": torch.arange(2), "labs": torch.arange(2)}
        if rank == 0:
            embs["image"], index["image"] = a[5:7], torch.arange(2)
        mm, parts = multimodal_loss(embs, index, 2, torch.tensor(10.0))
        # knowledge pairs on rank 0 only (as LightningModule.losses decides: on the global count, then every rank
        # calls clip_loss, an empty one with zero rows)
        n_k = 3 if rank == 0 else 0
        assert global_count(n_k, "cpu") == 3
        kt, kg = (a[:3], b[:3]) if n_k else (a[:0], b[:0])
        kl = clip_loss(kt, kg, 10.0)
        out[rank] = {"loss": float(loss), "grad": xa.grad.clone(), "mm": float(mm), "parts": sorted(parts),
                     "k": float(kl)}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_score_the_global_batch():
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    a, b = _data()
    full_a = a.clone().requires_grad_(True)
    full_t = clip_loss(full_a, b, 10.0)
    full_t.backward()
    full = full_t.item()
    for rank in (0, 1):
        assert out[rank]["loss"] == pytest.approx(full, rel=1e-5)
        torch.testing.assert_close(out[rank]["grad"], full_a.grad[_split(rank)], rtol=1e-4, atol=1e-6)
    # the pair set is global: note|labs from both ranks, image pairs from rank 0 only (2 patients: scored)
    assert out[0]["parts"] == out[1]["parts"] == ["image|labs", "image|note", "labs|note"]
    ref, _ = multimodal_loss({"note": a[0:4], "labs": b[0:4], "image": torch.cat([a[5:7], a[:0]])},
                             {"note": torch.arange(4), "labs": torch.arange(4), "image": torch.arange(2)}, 4,
                             torch.tensor(10.0))
    assert out[0]["k"] == out[1]["k"] == pytest.approx(clip_loss(a[:3], b[:3], 10.0).item(), rel=1e-5)
    assert out[0]["mm"] == pytest.approx(out[1]["mm"], rel=1e-6)
    assert out[0]["mm"] == pytest.approx(float(ref), rel=1e-5)
