"""PyTorch side of `sd_ops`: the same ops at the same shapes (SD 1.5's first UNet level at 512²),
frozen weights, gradients for the activations, best of N after one warm-up.
    python stages/fmn-sd/benches/pytorch_sd_ops.py [--iters N]
(torch from scripts/make-torch-venv.sh; run by hand or by compare.sh --ops, never by CI.)
"""
import argparse
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--iters", type=int, default=3)
p.add_argument("--only")
a = p.parse_args()
torch.manual_seed(0)
conv = torch.nn.Conv2d(320, 320, 3, padding=1).requires_grad_(False)
group_norm = torch.nn.GroupNorm(32, 320, eps=1e-5).requires_grad_(False)
layer_norm = torch.nn.LayerNorm(320, eps=1e-5).requires_grad_(False)
geglu = torch.nn.Linear(320, 2560).requires_grad_(False)


def attention(q, k, v):
    # diffusers' AttnProcessor2_0: SDPA on [B, H, N, D].
    return F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)).squeeze(0)


def gated(x):
    h, gate = geglu(x).chunk(2, dim=-1)
    return h * F.gelu(gate)


ops = [
    ("self_attention_4096x40", [(8, 4096, 40)] * 3, attention),
    ("self_attention_1024x80", [(8, 1024, 80)] * 3, attention),
    ("cross_attention_4096x77", [(8, 4096, 40), (8, 77, 40), (8, 77, 40)], attention),
    ("conv3x3_320_64x64", [(1, 320, 64, 64)], conv),
    ("group_norm_320_64x64", [(1, 320, 64, 64)], group_norm),
    ("layer_norm_4096x320", [(1, 4096, 320)], layer_norm),
    ("linear_4096x320x2560", [(1, 4096, 320)], geglu),
    ("geglu_4096x320", [(1, 4096, 320)], gated),
]


def best(f):
    f()
    times = []
    for _ in range(a.iters):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


for name, shapes, op in ops:
    if a.only and a.only != name:
        continue
    inputs = [torch.randn(s, requires_grad=True) for s in shapes]
    with torch.no_grad():
        upstream = torch.randn_like(op(*inputs))
        forward = best(lambda: op(*inputs))

    def step():
        (op(*inputs) * upstream).sum().backward()
        for x in inputs:
            x.grad = None

    both = best(step)
    print(f"pytorch op={name} forward={forward:.4f}s forward_backward={both:.4f}s")
