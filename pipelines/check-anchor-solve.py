"""The closed-form anchor solve of fmn-resteer (`solve_anchor`), recomputed independently with
torch + diffusers on the toy model: for every attn2 to_k / to_v weight W,
Δ = W (Aᵀ C − Cᵀ C)(Cᵀ C + λ (r_C / r_P) Pᵀ P)⁻¹ (C: the concept prompt's encoder rows,
A: its anchor prompt's, P: the preserved prompts'; λ = preserve_weight / anchor_weight), then
samples prompts with diffusers (DDIM 25, guidance 7.5, 8 images each) into OUT/<prompt>/ for
`fmn-toy judge`. Used to choose the preset's weights
(BENCHMARKS.md#re-steering-preset-how-it-was-chosen). Run by hand:

    python pipelines/check-anchor-solve.py CONCEPT LAMBDA OUT "template with {}" -- "prompt" ...

A template may mark the anchor's dropped part with brackets as configs/resteer/toy.yaml does;
the preserved prompts are that file's `preserve_prompts` not naming CONCEPT.
"""
import os
import re
import sys

import torch
import yaml
from diffusers import DDIMScheduler, StableDiffusionPipeline

torch.set_grad_enabled(False)
concept, lam, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
split = sys.argv.index("--")
templates, prompts = sys.argv[4:split], sys.argv[split + 1:]
pipe = StableDiffusionPipeline.from_pretrained("data/toy-model", safety_checker=None, requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)


def encode(texts):
    ids = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0].reshape(-1, pipe.text_encoder.config.hidden_size).double()


def fill(template, anchor):
    if "[" in template:
        return re.sub(r"\[(.*)\]", "" if anchor else (lambda m: m.group(1).format(concept)), template).strip()
    return template.format("" if anchor else concept).strip()


preserved = [p for p in yaml.safe_load(open("configs/resteer/toy.yaml"))["preserve_prompts"] if concept not in p.split()]
C = encode([fill(t, False) for t in templates])
A = encode([fill(t, True) for t in templates])
P = encode(preserved)
M = C.T @ C + lam * (C.shape[0] / P.shape[0]) * (P.T @ P)
G = (A.T @ C - C.T @ C) @ torch.linalg.inv(M)
for name, module in pipe.unet.named_modules():
    if name.endswith("attn2.to_k") or name.endswith("attn2.to_v"):
        W = module.weight.double()
        module.weight.copy_((W + W @ G).float())
for prompt in prompts:
    folder = os.path.join(out, prompt.replace(" ", "_"))
    os.makedirs(folder, exist_ok=True)
    images = pipe(prompt, num_inference_steps=25, guidance_scale=7.5, num_images_per_prompt=8,
                  generator=torch.Generator().manual_seed(0), height=64, width=64).images
    for i, image in enumerate(images):
        image.save(f"{folder}/{i}.png")
