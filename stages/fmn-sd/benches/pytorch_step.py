"""PyTorch reference for `sd_step`: one training step at SD 1.5 size (random weights), the same
work as `cargo bench -p fmn-sd --bench sd_step -- --mode M`, as a PyTorch user would write it:

- `ca`: re-steering with only the cross-attention (`attn2`) weights trainable; the loss is the
  sum of squares of every attn2's probabilities on context tokens 1 and 2, so attn2 materialises
  its probabilities (the loss needs them); self-attention uses SDPA (diffusers' default).
- `all`: the same loss, every UNet weight trainable.
- `ti`: textual inversion: CLIP text encoder (12 layers, 768) with two learned token rows,
  frozen UNet, MSE to a random target, backward to the rows only (also the attack's step).

Prints one line: time per iteration (best, mean) and peak RSS.

    python stages/fmn-sd/benches/pytorch_step.py --size 256 --mode ti --iters 2
(torch + diffusers + transformers from scripts/make-torch-venv.sh; run by hand or by
stages/fmn-sd/benches/compare.sh, never by CI.)
"""
import argparse
import resource
import time

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=256)
p.add_argument("--mode", choices=["ca", "all", "ti"], default="ti")
p.add_argument("--iters", type=int, default=2)
a = p.parse_args()
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280),
                            cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                            norm_num_groups=32).eval()
lat = a.size // 8
sample = torch.randn(1, 4, lat, lat)
t = torch.tensor([500])


class ProbeProcessor:
    """attn2 with its probabilities kept for the loss (diffusers' `AttnProcessor` math)."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)
        self.store.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


if a.mode == "ti":
    unet.requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, hidden_act="quick_gelu")).eval()
    text.requires_grad_(False)
    rows = (torch.randn(2, 768) * 0.017).requires_grad_(True)
    ids = torch.tensor([[49406, 320, 1125, 539, 0, 1] + [49407] * 71])
    target = torch.randn(1, 4, lat, lat)

    def put_rows(_module, _inputs, out):
        # The learned rows at positions 4 and 5, differentiably (what textual inversion trains).
        out = out.clone()
        out[0, 4:6] = rows
        return out

    text.get_input_embeddings().register_forward_hook(put_rows)

    def step():
        h = text(input_ids=ids).last_hidden_state
        loss = torch.nn.functional.mse_loss(unet(sample, t, h).sample, target)
        loss.backward()
        assert rows.grad is not None
        rows.grad = None
else:
    probs = []
    unet.set_attn_processor({name: (ProbeProcessor(probs) if ".attn2." in name else proc)
                             for name, proc in unet.attn_processors.items()})
    for name, param in unet.named_parameters():
        param.requires_grad_(a.mode == "all" or ".attn2." in name)
    context = torch.randn(1, 77, 768)

    def step():
        probs.clear()
        unet(sample, t, context)
        loss = sum(pr[..., 1:3].pow(2).sum() for pr in probs)
        loss.backward()
        unet.zero_grad(set_to_none=True)

times = []
for _ in range(a.iters):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"pytorch size={a.size} mode={a.mode} iters={a.iters} best={min(times):.2f}s "
      f"mean={sum(times)/len(times):.2f}s peak_rss={peak:.0f}MiB threads={torch.get_num_threads()}")
