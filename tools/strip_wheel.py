#!/usr/bin/env python3
"""Rewrites a wheel without the files under the given prefixes, its RECORD updated to match.
    python3 tools/strip_wheel.py IN.whl OUT_DIR PREFIX...
Used by tools/baseline_wheels.sh fetch (issue 15): unsloth without studio/ (its web UI, 88 MB unpacked, never imported by
FastLanguageModel), bitsandbytes with only the CUDA 12.6/12.8/13.0/13.2 and CPU libraries (it loads the
one matching torch.version.cuda, else the nearest lower of the same major)."""
import os
import sys
import zipfile


def main():
    src, out_dir, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
    dst = os.path.join(out_dir, os.path.basename(src))
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        kept = [i for i in zin.infolist() if not i.filename.startswith(prefixes)]
        for info in kept:
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if not l.split(",")[0].startswith(prefixes)) + "\n").encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    dropped = len(zipfile.ZipFile(src).infolist()) - len(kept)
    print(f"{dst}: {dropped} files dropped, {os.path.getsize(dst) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
