"""Fetches one wheel from PyPI with pip (only the wheel: nothing is installed) and unpacks the
members whose path matches a pattern into a folder, each written atomically (.part, rename).
Used by the install scripts for the runtime libraries fmn loads (ONNX Runtime, OpenBLAS).

    python3 scripts/lib/wheel_files.py REQUIREMENT MEMBER_REGEX DEST_DIR
Prints the unpacked files' paths, one per line; exits 1 with a message when nothing matches.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile
import zipfile

requirement, pattern, dest = sys.argv[1:4]
name = os.path.basename(sys.argv[0])
os.makedirs(dest, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--dest", tmp, requirement],
                   check=True, stdout=sys.stderr)
    wheels = glob.glob(os.path.join(tmp, "*.whl"))
    if len(wheels) != 1:
        sys.exit(f"{name}: pip fetched {len(wheels)} wheels for {requirement}, expected 1")
    with zipfile.ZipFile(wheels[0]) as z:
        members = [m for m in z.namelist() if re.search(pattern, m)]
        if not members:
            sys.exit(f"{name}: nothing in {os.path.basename(wheels[0])} matches {pattern}")
        for m in members:
            out = os.path.join(dest, os.path.basename(m))
            with z.open(m) as f, open(out + ".part", "wb") as g:
                g.write(f.read())
            os.chmod(out + ".part", 0o755)
            os.replace(out + ".part", out)
            print(out)
