#!/usr/bin/env python3
"""Write svdq-calib/1 calibration files from a PyTorch diffusers pipeline.

Registers forward pre-hooks on every nn.Linear (and 1x1 nn.Conv2d) of the
pipeline's transformer (or UNet), generates images for the prompts, and keeps
for every module, over every token of every denoising step:

  <module>.input_absmax   F32 [K]     per-channel max |x|
  <module>.input_samples  F32 [S, K]  a uniform random sample of S input rows
                                      (reservoir sampling, seeded)
  <module>.input_count    I64 [1]     rows seen

in one safetensors file with metadata {"format": "svdq-calib/1"}, keyed by
the module names of the transformer's state dict (e.g.
"transformer_blocks.0.attn.to_q"), which is what `svdq quantize --calib`
reads. Files from several runs merge with `svdq calib merge`.

  python dump_calib.py --model black-forest-labs/FLUX.1-schnell \\
      --prompts prompts.txt --steps 4 --samples 256 --out calib.safetensors

Needs torch and, for --model, diffusers. The safetensors package is not
needed: the file is written directly (8-byte header length, JSON header,
raw little-endian data). --self-test builds a small torch.nn transformer with
FLUX-like module names instead of loading a pipeline, runs it, writes the
file and reads it back, so the script can be checked without diffusers.
"""

import argparse
import json
import math
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "svdq-calib/1"
MAX_SAMPLES = 4096  # svdq rejects files with more sample rows per layer


class Reservoir:
    """Statistics of one module input: absmax, count and a reservoir sample.

    Reservoir sampling (Vitter's Algorithm R): the j-th row seen (0-based)
    replaces a random slot with probability S/(j+1), so at any time the S
    kept rows are a uniform sample of the rows seen. Rows holding NaN or
    +-Inf are skipped (svdq rejects non-finite statistics) and counted apart.
    """

    def __init__(self, k, samples, generator):
        self.k = k
        self.s = samples
        self.gen = generator
        self.absmax = None  # [K] float32, on the module's device
        self.rows = torch.empty(0, k, dtype=torch.float32)  # [<=S, K] on the CPU
        self.seen = 0
        self.nonfinite = 0

    def add(self, x):
        x = x.detach().reshape(-1, self.k).float()
        ok = torch.isfinite(x).all(dim=1)
        if not bool(ok.all()):
            self.nonfinite += int((~ok).sum())
            x = x[ok]
        n = x.shape[0]
        if n == 0:
            return
        amax = x.abs().amax(dim=0)
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        fill = min(max(self.s - self.rows.shape[0], 0), n)
        if fill:
            self.rows = torch.cat([self.rows, x[:fill].cpu()])
        if fill < n:
            # Row j (global index) is kept with probability S/(j+1), in slot
            # r ~ U{0..j} when r < S; later rows overwrite earlier ones.
            j = torch.arange(self.seen + fill, self.seen + n, dtype=torch.float64)
            u = torch.rand(n - fill, generator=self.gen, dtype=torch.float64)
            slot = torch.floor(u * (j + 1)).long()
            keep = torch.nonzero(slot < self.s).flatten().tolist()
            if keep:
                kept = x[fill:][keep].cpu()
                for i, row in zip(keep, kept):
                    self.rows[slot[i]] = row
        self.seen += n


class Recorder:
    """Forward pre-hooks on every nn.Linear and 1x1 nn.Conv2d of a module."""

    def __init__(self, root, samples, seed):
        if not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"--samples {samples}: want 1..{MAX_SAMPLES}")
        self.samples = samples
        self.seed = seed
        self.stats = {}
        self.handles = []
        for name, mod in root.named_modules():
            if isinstance(mod, nn.Linear):
                self.handles.append(mod.register_forward_pre_hook(self._hook(name, mod.in_features, False)))
            elif isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1) and mod.groups == 1:
                self.handles.append(mod.register_forward_pre_hook(self._hook(name, mod.in_channels, True)))
        if not self.handles:
            raise ValueError("no nn.Linear or 1x1 nn.Conv2d module to record")

    def _hook(self, name, k, conv):
        def hook(_mod, args):
            x = args[0]
            if conv:  # [B, C, H, W] -> one row per pixel
                x = x.permute(0, 2, 3, 1)
            r = self.stats.get(name)
            if r is None:
                # One generator per module, seeded from (seed, name): a
                # module's sample does not depend on the other modules.
                g = torch.Generator().manual_seed((self.seed * 1000003 + _fnv1a(name)) % (1 << 63))
                r = self.stats[name] = Reservoir(k, self.samples, g)
            r.add(x)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def f32_bytes(t):
    """Little-endian float32 bytes of a CPU tensor (numpy when present)."""
    t = t.detach().cpu().float().contiguous().flatten()
    try:
        return t.numpy().astype("<f4").tobytes()
    except (ImportError, RuntimeError):
        return struct.pack(f"<{t.numel()}f", *t.tolist())


def write_calib(path, stats):
    """Write the statistics as an svdq-calib/1 safetensors file.

    Tensors are laid out in sorted-name order; every tensor tiles the data
    section exactly (what svdq's strict reader checks)."""
    tensors = []
    for name in sorted(stats):
        r = stats[name]
        if r.seen == 0:
            continue
        tensors.append((name + ".input_absmax", "F32", [r.k], f32_bytes(r.absmax)))
        tensors.append((name + ".input_count", "I64", [1], struct.pack("<q", r.seen)))
        tensors.append((name + ".input_samples", "F32", [r.rows.shape[0], r.k], f32_bytes(r.rows)))
    tensors.sort(key=lambda t: t[0])
    header = {"__metadata__": {"format": FORMAT}}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, _, _, data in tensors:
            f.write(data)


def read_calib(path):
    """Read an svdq-calib/1 file back: {module: (absmax, samples, count)}."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    if header.get("__metadata__", {}).get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is not {FORMAT}")
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[b:end]
        if e["dtype"] == "I64":
            t = torch.tensor(struct.unpack("<q", raw))
        else:
            t = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(e["shape"])
        mod, field = name.rsplit(".", 1)
        out.setdefault(mod, {})[field] = t
    return {m: (f["input_absmax"], f["input_samples"], int(f["input_count"][0])) for m, f in out.items()}


def check_calib(path, want_counts=None):
    """Check the invariants svdq's reader enforces; return the module count."""
    mods = read_calib(path)
    for m, (absmax, samples, count) in mods.items():
        s, k = samples.shape
        assert absmax.shape == (k,), (m, absmax.shape, k)
        assert 1 <= s <= MAX_SAMPLES and count >= s, (m, s, count)
        assert torch.isfinite(samples).all() and torch.isfinite(absmax).all(), m
        assert (samples.abs() <= absmax).all(), m
        if want_counts is not None and m in want_counts:
            assert count == want_counts[m], (m, count, want_counts[m])
    return len(mods)


# --- self-test: a small torch.nn transformer with FLUX-like module names ---


class Attn(nn.Module):
    def __init__(self, d, context):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if context:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.to_out = nn.ModuleList([nn.Linear(d, d)])
            self.to_add_out = nn.Linear(d, d)


class FF(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(h, d)])
        self.net[0].proj = nn.Linear(d, h)

    def forward(self, x):
        return self.net[2](F.gelu(self.net[0].proj(x), approximate="tanh"))


class Norm(nn.Module):
    def __init__(self, d, chunks):
        super().__init__()
        self.linear = nn.Linear(d, chunks * d)


def attend(q, k, v, heads):
    b, t, d = q.shape
    q, k, v = (z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, t, d)


def modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]


class Double(nn.Module):
    def __init__(self, d, h, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm1_context = Norm(d, 6), Norm(d, 6)
        self.attn = Attn(d, True)
        self.ff, self.ff_context = FF(d, h), FF(d, h)

    def forward(self, x, c, temb):
        m = self.norm1.linear(F.silu(temb)).chunk(6, dim=-1)
        mc = self.norm1_context.linear(F.silu(temb)).chunk(6, dim=-1)
        nx, nc = modulate(x, m[0], m[1]), modulate(c, mc[0], mc[1])
        a = self.attn
        q = torch.cat([a.add_q_proj(nc), a.to_q(nx)], 1)
        k = torch.cat([a.add_k_proj(nc), a.to_k(nx)], 1)
        v = torch.cat([a.add_v_proj(nc), a.to_v(nx)], 1)
        o = attend(q, k, v, self.heads)
        oc, ox = o[:, : c.shape[1]], o[:, c.shape[1]:]
        x = x + m[2][:, None] * a.to_out[0](ox)
        c = c + mc[2][:, None] * a.to_add_out(oc)
        x = x + m[5][:, None] * self.ff(modulate(x, m[3], m[4]))
        c = c + mc[5][:, None] * self.ff_context(modulate(c, mc[3], mc[4]))
        return x, c


class Single(nn.Module):
    def __init__(self, d, h, heads):
        super().__init__()
        self.heads = heads
        self.norm = Norm(d, 3)
        self.attn = Attn(d, False)
        self.proj_mlp = nn.Linear(d, h)
        self.proj_out = nn.Linear(d + h, d)

    def forward(self, x, temb):
        m = self.norm.linear(F.silu(temb)).chunk(3, dim=-1)
        nx = modulate(x, m[0], m[1])
        mlp = F.gelu(self.proj_mlp(nx), approximate="tanh")
        o = attend(self.attn.to_q(nx), self.attn.to_k(nx), self.attn.to_v(nx), self.heads)
        return x + m[2][:, None] * self.proj_out(torch.cat([o, mlp], -1))


class TinyFlux(nn.Module):
    """FLUX-like names and layer graph at width d; x_embedder is a 1x1
    convolution over the latent grid (PixArt/SANA style) so that the conv
    path of the recorder runs too."""

    def __init__(self, d=32, h=128, heads=2, ctx=48, pooled=16):
        super().__init__()
        self.x_embedder = nn.Conv2d(64, d, 1)
        self.context_embedder = nn.Linear(ctx, d)
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = nn.Module()
        self.time_text_embed.timestep_embedder.linear_1 = nn.Linear(64, d)
        self.time_text_embed.timestep_embedder.linear_2 = nn.Linear(d, d)
        self.time_text_embed.text_embedder = nn.Module()
        self.time_text_embed.text_embedder.linear_1 = nn.Linear(pooled, d)
        self.time_text_embed.text_embedder.linear_2 = nn.Linear(d, d)
        self.transformer_blocks = nn.ModuleList([Double(d, h, heads)])
        self.single_transformer_blocks = nn.ModuleList([Single(d, h, heads)])
        self.norm_out = Norm(d, 2)
        self.proj_out = nn.Linear(d, 64)

    def forward(self, latent, text, pooled, t):
        # latent [B, 64, G, G], text [B, T, ctx], pooled [B, pooled], t [B]
        half = 32
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        arg = 1000 * t[:, None] * freqs
        tf = torch.cat([torch.cos(arg), torch.sin(arg)], -1)
        te = self.time_text_embed
        temb = te.timestep_embedder.linear_2(F.silu(te.timestep_embedder.linear_1(tf)))
        temb = temb + te.text_embedder.linear_2(F.silu(te.text_embedder.linear_1(pooled)))
        x = self.x_embedder(latent).flatten(2).transpose(1, 2)
        c = self.context_embedder(text)
        for blk in self.transformer_blocks:
            x, c = blk(x, c, temb)
        j = torch.cat([c, x], 1)
        for blk in self.single_transformer_blocks:
            j = blk(j, temb)
        x = j[:, c.shape[1]:]
        scale, shift = self.norm_out.linear(F.silu(temb)).chunk(2, dim=-1)
        return self.proj_out(modulate(x, shift, scale))


def self_test(args):
    torch.manual_seed(args.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = TinyFlux().to(dev).eval()
    rec = Recorder(model, args.samples, args.seed)
    prompts, grid, tokens = 3, 4, 6
    with torch.no_grad():
        for _ in range(prompts):  # one "prompt": fixed text, a denoising loop
            text = torch.randn(1, tokens, 48, device=dev)
            pooled = torch.randn(1, 16, device=dev)
            x = torch.randn(1, 64, grid, grid, device=dev)
            for step in range(args.steps):
                t = torch.tensor([1 - step / args.steps], device=dev)
                v = model(x, text, pooled, t)
                x = x - v.transpose(1, 2).reshape(x.shape) / args.steps
    rec.remove()
    write_calib(args.out, rec.stats)
    calls = prompts * args.steps
    want = {
        "x_embedder": calls * grid * grid,
        "context_embedder": calls * tokens,
        "transformer_blocks.0.attn.to_q": calls * grid * grid,
        "transformer_blocks.0.attn.add_q_proj": calls * tokens,
        "single_transformer_blocks.0.proj_out": calls * (grid * grid + tokens),
        "transformer_blocks.0.norm1.linear": calls,
    }
    n = check_calib(args.out, want)
    print(f"self-test: torch {torch.__version__} on {dev}"
          + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else "")
          + f"; {n} modules, {calls} forward passes -> {args.out} (read back and checked)")


def run_pipeline(args):
    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        sys.exit("dump_calib.py: --model needs the diffusers package (pip install diffusers); try --self-test")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    root = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if root is None:
        sys.exit(f"dump_calib.py: {args.model}: pipeline has no transformer or unet")
    with open(args.prompts) as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        sys.exit(f"dump_calib.py: {args.prompts}: no prompts")
    rec = Recorder(root, args.samples, args.seed)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            pipe(p, num_inference_steps=args.steps, generator=gen, height=args.height, width=args.width)
            print(f"[{i + 1}/{len(prompts)}] {p[:60]}", file=sys.stderr)
    rec.remove()
    skipped = {m: r.nonfinite for m, r in rec.stats.items() if r.nonfinite}
    if skipped:
        print(f"warning: rows with NaN/Inf skipped: {skipped}", file=sys.stderr)
    write_calib(args.out, rec.stats)
    print(f"{len(rec.stats)} modules from {len(prompts)} prompts x {args.steps} steps -> {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="diffusers model id or local path")
    ap.add_argument("--prompts", help="text file, one prompt per line")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per prompt (default 4)")
    ap.add_argument("--samples", type=int, default=256, help=f"sample rows kept per module, 1..{MAX_SAMPLES} (default 256)")
    ap.add_argument("--out", required=True, help="output .safetensors file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--self-test", action="store_true", help="record a small built-in FLUX-like torch.nn model instead")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.self_test:
        self_test(args)
    elif args.model and args.prompts:
        run_pipeline(args)
    else:
        ap.error("give --model and --prompts, or --self-test")


if __name__ == "__main__":
    main()
