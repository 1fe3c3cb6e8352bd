"""PyTorch reference for `sd_step --mode ti`: one textual-inversion step at SD 1.5 size (random
weights): CLIP text encoder (12 layers, 768) with two learned token rows, frozen UNet, MSE to a
random target, backward to the rows only. Prints time per iteration and peak RSS.

    python stages/fmn-sd/benches/pytorch_ti_step.py --size 256 --iters 2
(torch + diffusers + transformers; run by hand, never by CI.)
"""
import argparse
import resource
import time

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=256)
p.add_argument("--iters", type=int, default=2)
a = p.parse_args()
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280),
                            cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                            norm_num_groups=32).eval()
text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                    num_hidden_layers=12, num_attention_heads=12,
                                    max_position_embeddings=77, hidden_act="quick_gelu")).eval()
for m in (unet, text):
    m.requires_grad_(False)
rows = (torch.randn(2, 768) * 0.017).requires_grad_(True)
ids = torch.tensor([[49406, 320, 1125, 539, 0, 1] + [49407] * 71])
lat = a.size // 8
sample = torch.randn(1, 4, lat, lat)
target = torch.randn(1, 4, lat, lat)
t = torch.tensor([500])


def put_rows(_module, _inputs, out):
    # The learned rows at positions 4 and 5, differentiably (what textual inversion trains).
    out = out.clone()
    out[0, 4:6] = rows
    return out


text.get_input_embeddings().register_forward_hook(put_rows)
times = []
for _ in range(a.iters):
    start = time.perf_counter()
    h = text(input_ids=ids).last_hidden_state
    pred = unet(sample, t, h).sample
    loss = torch.nn.functional.mse_loss(pred, target)
    loss.backward()
    assert rows.grad is not None
    rows.grad = None
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"pytorch-ti size={a.size} iters={a.iters} best={min(times):.2f}s mean={sum(times)/len(times):.2f}s "
      f"peak_rss={peak:.0f}MiB threads={torch.get_num_threads()}")
