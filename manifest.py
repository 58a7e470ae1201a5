"""
Verified checkpoints: manifest.json, written last into a checkpoint, lists each file's size and
CRC-32; a resume checks them before it reads anything (checkpoint.open_run).

    write_manifest("out/ckpt-000010")      # the save's last write, before the rename
    verify("out/ckpt-000010")              # None, or what is wrong: "model.safetensors is missing"

CRC-32 (zlib, ~GB/s, the files hashed in parallel threads) finds a truncated or emptied file and a
flipped bit; it is no defence against tampering.
"""

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

MANIFEST = "manifest.json"


def _crc32(path):
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)          # releases the GIL: files are hashed in parallel
    return f"{crc:08x}"


def _files(ckpt):
    return sorted(os.path.relpath(os.path.join(d, n), ckpt) for d, _, names in os.walk(ckpt)
                  for n in names if n != MANIFEST)


def write_manifest(ckpt):
    files = _files(ckpt)
    with ThreadPoolExecutor(8) as pool:
        crcs = list(pool.map(lambda f: _crc32(os.path.join(ckpt, f)), files))
    manifest = {f: {"bytes": os.path.getsize(os.path.join(ckpt, f)), "crc32": c} for f, c in zip(files, crcs)}
    with open(os.path.join(ckpt, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def verify(ckpt):
    """What is wrong with checkpoint `ckpt` (a string), or None when every file the manifest lists
    is there with its size and CRC. A checkpoint from before manifests passes unchecked."""
    path = os.path.join(ckpt, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        return f"{MANIFEST} unreadable: {e}"
    sizes = {name: os.path.getsize(os.path.join(ckpt, name)) for name in manifest
             if os.path.isfile(os.path.join(ckpt, name))}
    for name, entry in manifest.items():
        if name not in sizes:
            return f"{name} is missing"
        if sizes[name] != entry["bytes"]:
            return f"{name} has {sizes[name]} bytes, {entry['bytes']} were written"
    with ThreadPoolExecutor(8) as pool:
        crcs = dict(zip(manifest, pool.map(lambda name: _crc32(os.path.join(ckpt, name)), manifest)))
    bad = [name for name, entry in manifest.items() if crcs[name] != entry["crc32"]]
    return f"{bad[0]} differs from what was written (CRC-32)" if bad else None
