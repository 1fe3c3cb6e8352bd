"""Does diffusers load the shipped toy model and sample what fmn-sample samples? Loads MODEL with
`StableDiffusionPipeline.from_pretrained`, samples PROMPT from fixed starting latents (DDIM 25
steps as the folder's scheduler config says, guidance 4 — the folder's sampling_defaults.json),
runs `fmn-sample` (its default guidance, read from that file) from the same latents, and prints
the largest difference of the final latents relative to diffusers' largest value. Run by hand
with torch + diffusers 0.42.1 (BENCHMARKS.md#toy-model-in-diffusers):

    python pipelines/check-toy-diffusers.py [MODEL] [OUT] [PROMPT]
"""
import json
import os
import subprocess
import sys

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

model = sys.argv[1] if len(sys.argv) > 1 else "data/toy-model"
out = sys.argv[2] if len(sys.argv) > 2 else "out/check-toy-diffusers"
prompt = sys.argv[3] if len(sys.argv) > 3 else "a photo of bob"
os.makedirs(out, exist_ok=True)
torch.set_grad_enabled(False)

guidance = json.load(open(os.path.join(model, "sampling_defaults.json")))["guidance_scale"]
pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
print(f"diffusers loaded {model}: {type(pipe.scheduler).__name__}, prediction "
      f"{pipe.scheduler.config.prediction_type}, UNet down blocks {pipe.unet.config.down_block_types}")

latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
save_file({"latents": latents.contiguous()}, os.path.join(out, "init.safetensors"))
ref = pipe(prompt, num_images_per_prompt=4, latents=latents.clone(), guidance_scale=guidance,
           num_inference_steps=25, output_type="latent").images
images = pipe.vae.decode(ref / pipe.vae.config.scaling_factor).sample

subprocess.run(["target/debug/fmn-sample", "--model", model, "--prompt", prompt,
                "--init-latents", os.path.join(out, "init.safetensors"),
                "--save-latents", os.path.join(out, "ours.safetensors"),
                "--out", os.path.join(out, "ours"), "--quiet"], check=True)
ours = load_file(os.path.join(out, "ours.safetensors"))["latents"]
manifest = json.load(open(os.path.join(out, "ours", "manifest.json")))
diff = (ours - ref).abs().max().item() / ref.abs().max().item()
print(f"guidance: diffusers {guidance}, fmn-sample {manifest['guidance']}")
print(f"final latents, max |fmn - diffusers| / max |diffusers| = {diff:.2e}")
pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
from PIL import Image  # noqa: E402  (only needed for the reference images)

os.makedirs(os.path.join(out, "diffusers"), exist_ok=True)
for i, px in enumerate(pixels):
    Image.fromarray(px).save(os.path.join(out, "diffusers", f"{i}.png"))
