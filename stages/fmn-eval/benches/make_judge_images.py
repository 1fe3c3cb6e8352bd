#!/usr/bin/env python3
"""Writes N 512x512 PNGs for the `fmn-eval judge` folder benchmark (BENCHMARKS.md#fmn-eval-judge-on-a-folder):
the public-domain photos in tests/fixtures/photos/ cycled, each cut at an offset that moves with
the pass, mirrored on odd passes, resized bilinear to 512x512. Needs Pillow (measurement only,
never CI): `python3 stages/fmn-eval/benches/make_judge_images.py OUT_DIR [N=1000]`."""
import os
import sys

from PIL import Image, ImageOps

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")


def main() -> None:
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    src = os.path.join(ROOT, "tests", "fixtures", "photos")
    photos = [Image.open(os.path.join(src, f)).convert("RGB") for f in sorted(os.listdir(src))]
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        k = i // len(photos)
        w, h = img.size
        cut = max(1, min(w, h) // 8)
        dx, dy = (k * 7) % cut, (k * 5) % cut
        img = img.crop((dx, dy, w - (cut - dx), h - (cut - dy)))
        if k % 2:
            img = ImageOps.mirror(img)
        img.resize((512, 512), Image.BILINEAR).save(os.path.join(out, f"{i:04d}.png"))


if __name__ == "__main__":
    main()
