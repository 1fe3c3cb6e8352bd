"""Mean epsilon MSE of a diffusers model on a folder of images under several conditionings:
learned tokens (an fmn-invert file with tokens <t1> <t2>), their random initialisation, and
given prompts. Shows how much the prompt moves the denoising loss
(figures in git history: BENCHMARKS.md before 2026-12-04). Run by hand with torch + diffusers:

    python pipelines/check-inversion-loss.py EMBEDDING.safetensors IMAGES_DIR "a prompt" ...
"""
import torch, glob, numpy as np, sys
from PIL import Image
from safetensors.torch import load_file
from diffusers import StableDiffusionPipeline
torch.manual_seed(0)
pipe = StableDiffusionPipeline.from_pretrained("data/toy-model", safety_checker=None, requires_safety_checker=False)
tok, te, unet, vae, sch = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler
emb = load_file(sys.argv[1])
tok.add_tokens(["<t1>", "<t2>"]); te.resize_token_embeddings(len(tok))
W = te.get_input_embeddings().weight.data
ids = tok.convert_tokens_to_ids(["<t1>", "<t2>"])
imgs = sorted(glob.glob(sys.argv[2] + "/*.png"))
xs = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).float().permute(2,0,1)/127.5-1 for p in imgs])
from diffusers import DDPMScheduler
ddpm = DDPMScheduler.from_config(sch.config)
with torch.no_grad():
    lat = vae.encode(xs).latent_dist.mean * vae.config.scaling_factor
    g = torch.Generator().manual_seed(1)
    N = 400
    idx = torch.randint(0, len(imgs), (N,), generator=g)
    ts = torch.randint(0, 1000, (N,), generator=g)
    noise = torch.randn((N,) + lat.shape[1:], generator=g)
    def loss(prompt, rows=None):
        if rows is not None:
            W[ids[0]] = rows[0]; W[ids[1]] = rows[1]
        e = te(tok([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
        tot = 0
        for k in range(0, N, 100):
            x0 = lat[idx[k:k+100]]; n = noise[k:k+100]; t = ts[k:k+100]
            xt = ddpm.add_noise(x0, n, t)
            p = unet(xt, t, e.expand(len(t), -1, -1)).sample
            tot += ((p - n) ** 2).mean().item() * len(t)
        return tot / N
    learned = torch.stack([emb["<t1>"], emb["<t2>"]])
    print("learned tokens", loss("a photo of <t1> <t2>", learned))
    print("random init  ", loss("a photo of <t1> <t2>", torch.randn(2, W.shape[1]) * 0.017))
    for p in sys.argv[3:]:
        print(repr(p), loss(p))
