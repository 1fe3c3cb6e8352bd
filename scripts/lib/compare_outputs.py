"""Largest differences between two runs of the same work on two devices (scripts/gpu-check.sh):
the PNGs of two fmn-sample folders (same file names) and the tensors of two patches.

    python3 scripts/lib/compare_outputs.py SAMPLES_A SAMPLES_B PATCH_A PATCH_B

Exit 0 when the images differ by at most 8 of 255 and the deltas by at most 1 % of their
largest value; stdlib only (PNG: 8-bit RGB, as fmn-sample writes).
"""
import struct, sys, zlib, json, pathlib
def png_pixels(path):
    data = path.read_bytes()
    pos, w, h, raw = 8, 0, 0, b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            raw += body
        pos += 12 + n
    raw, bpp, rows, prev = zlib.decompress(raw), 3, [], [0] * (w * 3)
    stride = w * bpp
    for y in range(h):
        f, line = raw[y * (stride + 1)], list(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            p = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(f)
            if f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + p) & 255
        rows.append(line); prev = line
    return rows
worst = 0
samples_a, samples_b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in sorted(samples_a.glob("*.png")):
    a, b = png_pixels(f), png_pixels(samples_b / f.name)
    worst = max(worst, max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)))
print(f"sampling parity (A vs B): largest pixel difference {worst} of 255")
def tensors(path):
    data = path.read_bytes(); n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n]); body = data[8 + n:]
    out = {}
    for k, v in head.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; raw = body[s:e]
        fmt = {"F32": "f", "F16": "e"}[v["dtype"]]
        out[k] = struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw)
    return out
a, b = tensors(pathlib.Path(sys.argv[3])), tensors(pathlib.Path(sys.argv[4]))
diff = max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a)
scale = max(max(abs(x) for x in a[k]) for k in a)
print(f"re-steering parity (A vs B): largest delta difference {diff:.3g} of {scale:.3g}")
sys.exit(0 if worst <= 8 and diff <= 1e-2 * scale else 1)
