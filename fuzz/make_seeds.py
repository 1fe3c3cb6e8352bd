#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/seeds/<target>/): small valid files of each
format, so that the fuzzer starts past the headers. Standard library only; run from the repo
root: `python3 fuzz/make_seeds.py`. The JPEG seed of training_masks (`rgb.jpg`) was written
once by the `image` crate's encoder and is kept as it is."""
import hashlib, json, os, shutil, struct, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def out(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, raw bytes)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def f16(*v):
    return struct.pack(f"<{len(v)}e", *v)


def header_only(path):
    """The header of a single-file checkpoint with every tensor made empty (a trailing 0 axis),
    so that the names and the axes the SD 1.x / 2.x inference reads stay, in about 80 KB."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = (info["dtype"], info["shape"] + [0], b"")
    return safetensors(tensors, header.get("__metadata__"))


def patch(key, dtype, values):
    raw = f16(*values) if dtype == "F16" else f32(*values)
    sha = hashlib.sha256(b"base " + key.encode()).hexdigest()
    fp = hashlib.sha256(f"{key}:{sha}\n".encode()).hexdigest()
    meta = {
        "format": "fmn-patch/1",
        "fmn_version": "0.1.0",
        "concepts": json.dumps([{"name": "bob", "kind": "object"}]),
        "settings": json.dumps({"learning_rate": 0.001}),
        "delta_dtype": dtype.lower(),
        "base_hashes": json.dumps({key: {"sha256": sha, "shape": [len(values)]}}),
        "base_fingerprint": fp,
    }
    return safetensors({key: (dtype, [len(values)], raw)}, meta)


def png(width, height, color_type, rows, depth=8, palette=None):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\0" + r for r in rows)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
    if palette:
        data += chunk(b"PLTE", palette)
    return data + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main():
    # safetensors_header
    tiny = safetensors({"a": ("F32", [2, 2], f32(1, 2, 3, 4)), "b": ("F16", [3], f16(1, 2, 3))}, {"k": "v"})
    out("safetensors_header", "tiny.safetensors", tiny)
    out("safetensors_header", "empty.safetensors", safetensors({}))
    out("safetensors_header", "dtypes.safetensors", safetensors({
        "i64": ("I64", [1], struct.pack("<q", -1)), "u8": ("U8", [2], b"\1\2"),
        "bf16": ("BF16", [1], b"\x80\x3f"), "bool": ("BOOL", [1], b"\1")}))
    # patch_load
    out("patch_load", "f16.safetensors", patch("unet.conv_in.weight", "F16", [0.5, -0.25]))
    out("patch_load", "f32.safetensors", patch("text_encoder.text_model.final_layer_norm.bias", "F32", [1e-3, 0, 2]))
    shutil.copy(os.path.join(ROOT, "tests/fixtures/patch/sd1-tiny-forget-lora.safetensors"),
                os.path.join(SEEDS, "patch_load", "fixture-lora.safetensors"))
    # embedding_load: the three layouts
    out("embedding_load", "fmn.safetensors", safetensors(
        {"<s1>": ("F32", [4], f32(1, 2, 3, 4)), "<s2>": ("F32", [4], f32(5, 6, 7, 8))},
        {"format": "fmn-embedding/1", "tokens": json.dumps(["<s1>", "<s2>"]),
         "initializers": json.dumps(["cat", "<zero>"]), "text_width": "4",
         "settings": "{}", "fmn_version": "0.1.0", "base_fingerprint": "0123456789abcdef"}))
    out("embedding_load", "a1111.safetensors", safetensors(
        {"emb_params": ("F16", [2, 4], f16(*range(8)))}, {"name": "concept"}))
    out("embedding_load", "diffusers.safetensors", safetensors({"<cat-toy>": ("F32", [4], f32(1, 0, 0, 1))}))
    # config_yaml: the shipped configs and suites, and one minimal valid re-steering config
    os.makedirs(os.path.join(SEEDS, "config_yaml"), exist_ok=True)
    for rel in ["configs/resteer/original.yaml", "configs/resteer/toy.yaml", "configs/invert/original.yaml",
                "configs/invert/toy.yaml", "configs/eval/objects.yaml", "configs/eval/toy-bob.yaml"]:
        shutil.copy(os.path.join(ROOT, rel), os.path.join(SEEDS, "config_yaml", rel.replace("/", "-")))
    out("config_yaml", "resteer-minimal.yaml", "multi_concept:\n  - {name: bob, kind: identity}\nlora_rank: 4\nsolve_anchor: false\nmax_train_steps: 0\n")
    # training_masks: PNGs of each colour type (16x16, the smallest image accepted)
    out("training_masks", "gray.png", png(16, 16, 0, [bytes((x * y) % 256 for x in range(16)) for y in range(16)]))
    out("training_masks", "rgb.png", png(16, 16, 2, [bytes(v for x in range(16) for v in (x * 16, y * 16, 9)) for y in range(16)]))
    out("training_masks", "palette.png", png(16, 16, 3, [bytes((x + y) % 2 for x in range(16)) for y in range(16)], palette=b"\0\0\0\xff\xff\xff"))
    out("training_masks", "gray16.png", png(16, 16, 0, [b"\x12\x34" * 16 for _ in range(16)], depth=16))
    out("training_masks", "rgba.png", png(16, 16, 6, [b"\x10\x20\x30\x80" * 16 for _ in range(16)]))
    # sample_manifest
    images = [{"file": f"p000_n{k:02}.png", "prompt_index": 0, "prompt": "a photo of bob", "image_index": k, "seed": k} for k in range(2)]
    out("sample_manifest", "manifest.json", json.dumps({
        "fmn_version": "0.1.0", "model": "tests/fixtures/sd1-tiny", "prompts": ["a photo of bob"],
        "negative_prompt": "", "scheduler": "ddim", "steps": 1, "guidance": 1.0, "width": 64, "height": 64,
        "seed": 0, "num_images": 2, "init_latents": None, "images": images}, indent=1))
    out("sample_manifest", "sharded.json", json.dumps({
        "prompts": ["a", "b"], "shard": {"index": 1, "count": 2},
        "images": [{"file": "x.png", "prompt": "b", "image_index": 0, "seed": None}]}))
    # single_file: SD 1.x and 2.x checkpoints' headers with empty tensors
    for name in ["sd1-tiny", "sd2-tiny"]:
        out("single_file", f"{name}-empty.safetensors", header_only(os.path.join(ROOT, f"tests/fixtures/single-file/{name}.safetensors")))


if __name__ == "__main__":
    main()
