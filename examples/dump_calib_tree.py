#!/usr/bin/env python3
"""Run dump_calib.py's recorder on a torch module tree with a checkpoint's
real module names.

Builds, from the tensor names and shapes of a .safetensors checkpoint (for
example one from `svdq synth --arch sdxl`), the nn.Linear and 1x1 nn.Conv2d
modules its `.weight` tensors belong to, at the same dotted paths (numeric
path parts become nn.ModuleList entries, as in diffusers), registers
dump_calib.Recorder on the root, calls every module STEPS times on random
inputs (Linear: [2, T, K] tokens; Conv2d: [1, C, 4, 4] pixels), writes the
svdq-calib/1 file with dump_calib.write_calib and reads it back with
dump_calib.check_calib, which checks every module's row count. `svdq
quantize --calib OUT` then shows whether the names line up with svdq's
presets for that family.

  python examples/dump_calib_tree.py CHECKPOINT.safetensors OUT.safetensors [--steps 3] [--samples 16]

Needs torch only (the checkpoint header is read directly).
"""
import argparse
import json
import os
import struct
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dump_calib  # noqa: E402

TOKENS = 5


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def build(header):
    root = nn.Module()
    made = {}
    for name, info in sorted(header.items()):
        if not name.endswith(".weight"):
            continue
        shape = info["shape"]
        if len(shape) == 2:
            mod = nn.Linear(shape[1], shape[0], bias=False)
        elif len(shape) == 4 and shape[2] == 1 and shape[3] == 1:
            mod = nn.Conv2d(shape[1], shape[0], 1, bias=False)
        else:
            continue
        path = name[: -len(".weight")].split(".")
        parent = root
        for part in path[:-1]:
            child = parent._modules.get(part)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
            parent = child
        parent.add_module(path[-1], mod)
        made[".".join(path)] = mod
    if not made:
        sys.exit("dump_calib_tree.py: no 2-D or 1x1 conv weights in the checkpoint")
    return root, made


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root, made = build(read_header(args.checkpoint))
    rec = dump_calib.Recorder(root, args.samples, args.seed)
    torch.manual_seed(args.seed)
    want = {}
    with torch.no_grad():
        for _ in range(args.steps):
            for name, mod in made.items():
                if isinstance(mod, nn.Conv2d):
                    mod(torch.randn(1, mod.in_channels, 4, 4))
                    want[name] = want.get(name, 0) + 16
                else:
                    mod(torch.randn(2, TOKENS, mod.in_features))
                    want[name] = want.get(name, 0) + 2 * TOKENS
    rec.remove()
    dump_calib.write_calib(args.out, rec.stats)
    n = dump_calib.check_calib(args.out, want)
    print(f"dump_calib_tree: torch {torch.__version__}; {n} modules named as in {os.path.basename(args.checkpoint)} -> {args.out}")


if __name__ == "__main__":
    main()
