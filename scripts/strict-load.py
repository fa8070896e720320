#!/usr/bin/env python3
"""strict-load.py: prove that every quantized layer of an svdq .safetensors file
strict-loads into nunchaku's OWN Python layer classes.

    python3 scripts/strict-load.py --nunchaku /path/to/nunchaku-source-tree \
        --family {flux,qwen-image,sdxl,z-image} [--dtype bf16|fp16] \
        [--precision int4|nvfp4] FILE.safetensors

Needs PyTorch (CPU is enough). Needs neither diffusers nor a nunchaku build:
nunchaku/models/linear.py (SVDQW4A4Linear, AWQW4A16Linear) and the loaders'
key-rename / fix-up functions are imported from the source tree given with
--nunchaku, with stub modules standing in for nunchaku's compiled ops (they
raise if called: nothing here runs a kernel) and for diffusers /
huggingface_hub (dummy classes, identity decorators).

For each family the script builds every quantized module the way nunchaku's
loader does (class, bias, act_unsigned, rank, precision, dtype: see FAMILIES
below, each entry citing the loader code it follows), takes in/out features
from the file's qweight shapes, applies the loader's key renames and pre-load
fix-ups (the real functions), and calls module.load_state_dict(..., strict=True).

Exit status: 0 every layer loads, 1 a layer fails (or none was found),
2 bad usage or the check could not run (unreadable file, missing torch,
nunchaku sources that cannot be imported).
"""

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import json
import linecache
import os
import re
import struct
import sys
import types
from dataclasses import dataclass

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or an environment in which the check cannot run (exit 2)."""


# --------------------------------------------------------------------------
# Family tables, derived from nunchaku's loaders (nunchaku-tech/nunchaku;
# checked against commit 3a3cc3d). Paths below are relative to the source tree.
#
# An Entry is one quantized module inside one transformer block:
#   rel           module path inside the block (after the loader's key renames)
#   cls           "W4A4" -> SVDQW4A4Linear, "W4A16" -> AWQW4A16Linear
#   bias          whether the diffusers nn.Linear the loader converts has a bias
#                 (from_linear passes bias=linear.bias is not None)
#   act_unsigned  "int4": the loader sets act_unsigned = precision != "nvfp4";
#                 False: left at the constructor default (False)
#   quant_kwargs  W4A16 only: whether the loader passes precision=/rank= to
#                 AWQW4A16Linear.from_linear (swallowed by its **kwargs; no
#                 torch_dtype is passed either way, so the AWQ layer gets
#                 from_linear's default torch_dtype, bfloat16, whatever the
#                 model dtype)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    rel: str
    cls: str
    bias: bool
    act_unsigned: object = False
    quant_kwargs: bool = True


@dataclass(frozen=True)
class Block:
    pattern: str  # regex matching the block prefix at the start of a key
    entries: tuple
    kept: tuple  # regexes (relative to the block) of 16-bit tensors the block keeps


@dataclass(frozen=True)
class Family:
    loader: str  # file of the loader, relative to the source tree
    loader_fn: str
    convert: tuple  # (module, function) of the loader's key rename, or None
    patch_scale_key: bool  # does the loader call transformers/utils.py patch_scale_key?
    blocks: tuple


_V2 = "nunchaku/models/transformers/transformer_flux_v2.py"
_QW = "nunchaku/models/transformers/transformer_qwenimage.py"
_SDXL = "nunchaku/models/unets/unet_sdxl.py"
_ZI = "nunchaku/models/transformers/transformer_zimage.py"

FAMILIES = {
    # NunchakuFluxTransformer2DModelV2.from_pretrained: _patch_model(precision, rank),
    # convert_flux_state_dict, patch_scale_key, load_state_dict (strict).
    # Every FLUX linear has a bias (FluxAttention bias=True, out_bias/added_proj_bias
    # default True; FeedForward, proj_mlp, proj_out, AdaLayerNormZero(Single).linear bias=True).
    "flux": Family(
        loader=_V2,
        loader_fn="NunchakuFluxTransformer2DModelV2.from_pretrained",
        convert=("nunchaku.models.transformers.transformer_flux_v2", "convert_flux_state_dict"),
        patch_scale_key=True,
        blocks=(
            Block(
                r"transformer_blocks\.\d+",
                (
                    # transformer_flux_v2.py NunchakuFluxAttention.__init__: from_linear(fuse_linears([to_q, to_k, to_v]))
                    Entry("attn.to_qkv", "W4A4", True),
                    # transformer_flux_v2.py NunchakuFluxAttention.__init__: to_out[0] = from_linear(to_out[0])
                    Entry("attn.to_out.0", "W4A4", True),
                    # transformer_flux_v2.py NunchakuFluxAttention.__init__: from_linear(fuse_linears([add_q_proj, add_k_proj, add_v_proj]))
                    Entry("attn.add_qkv_proj", "W4A4", True),
                    # transformer_flux_v2.py NunchakuFluxAttention.__init__: from_linear(other.to_add_out)
                    Entry("attn.to_add_out", "W4A4", True),
                    # attention.py NunchakuFeedForward.__init__ (_patch_linear), via NunchakuFluxTransformerBlock.__init__ (ff)
                    Entry("ff.net.0.proj", "W4A4", True),
                    # attention.py NunchakuFeedForward.__init__: net[2].act_unsigned = precision != "nvfp4"
                    Entry("ff.net.2", "W4A4", True, act_unsigned="int4"),
                    # same, NunchakuFluxTransformerBlock.__init__ (ff_context)
                    Entry("ff_context.net.0.proj", "W4A4", True),
                    Entry("ff_context.net.2", "W4A4", True, act_unsigned="int4"),
                    # normalization.py NunchakuAdaLayerNormZero.__init__: AWQW4A16Linear.from_linear(other.linear)
                    # (no kwargs, no torch_dtype), via NunchakuFluxTransformerBlock.__init__ (norm1, norm1_context)
                    Entry("norm1.linear", "W4A16", True, quant_kwargs=False),
                    Entry("norm1_context.linear", "W4A16", True, quant_kwargs=False),
                ),
                # NunchakuFluxAttention keeps other.norm_q/norm_k/norm_added_q/norm_added_k (RMSNorm weights);
                # norm2/norm2_context and the AdaLayerNormZero .norm are LayerNorms without parameters.
                (r"attn\.norm_(added_)?[qk]\.weight",),
            ),
            Block(
                r"single_transformer_blocks\.\d+",
                (
                    # transformer_flux_v2.py NunchakuFluxSingleTransformerBlock.__init__: from_linear(block.proj_mlp)
                    Entry("mlp_fc1", "W4A4", True),
                    # ... from_linear(block.proj_out, in_features=mlp_hidden_dim); act_unsigned = precision != "nvfp4"
                    Entry("mlp_fc2", "W4A4", True, act_unsigned="int4"),
                    # ... NunchakuFluxAttention(block.attn) (pre_only: no to_out from the attention itself)
                    Entry("attn.to_qkv", "W4A4", True),
                    # ... self.attn.to_out = from_linear(block.proj_out, in_features=mlp_fc1.in_features): a module, not to_out.0
                    Entry("attn.to_out", "W4A4", True),
                    # normalization.py NunchakuAdaLayerNormZeroSingle.__init__: AWQW4A16Linear.from_linear(other.linear)
                    Entry("norm.linear", "W4A16", True, quant_kwargs=False),
                ),
                (r"attn\.norm_[qk]\.weight",),
            ),
        ),
    ),
    # NunchakuQwenImageTransformer2DModel.from_pretrained: _patch_model(precision, rank),
    # no key conversion, patch_scale_key, load_state_dict (strict).
    # QwenImageTransformerBlock: Attention(bias=True, added_proj_bias/out_bias default True),
    # FeedForward (bias default True), img_mod/txt_mod = Sequential(SiLU, Linear(bias=True)).
    "qwen-image": Family(
        loader=_QW,
        loader_fn="NunchakuQwenImageTransformer2DModel.from_pretrained",
        convert=None,
        patch_scale_key=True,
        blocks=(
            Block(
                r"transformer_blocks\.\d+",
                (
                    # transformer_qwenimage.py NunchakuQwenAttention.__init__: from_linear(fuse_linears([to_q, to_k, to_v]))
                    Entry("attn.to_qkv", "W4A4", True),
                    # ... from_linear(fuse_linears([add_q_proj, add_k_proj, add_v_proj]))
                    Entry("attn.add_qkv_proj", "W4A4", True),
                    # ... to_out[0] = from_linear(to_out[0])
                    Entry("attn.to_out.0", "W4A4", True),
                    # ... from_linear(other.to_add_out)
                    Entry("attn.to_add_out", "W4A4", True),
                    # attention.py NunchakuFeedForward.__init__, via NunchakuQwenImageTransformerBlock.__init__ (img_mlp, txt_mlp)
                    Entry("img_mlp.net.0.proj", "W4A4", True),
                    Entry("img_mlp.net.2", "W4A4", True, act_unsigned="int4"),
                    Entry("txt_mlp.net.0.proj", "W4A4", True),
                    Entry("txt_mlp.net.2", "W4A4", True, act_unsigned="int4"),
                    # transformer_qwenimage.py NunchakuQwenImageTransformerBlock.__init__:
                    # AWQW4A16Linear.from_linear(other.img_mod[1], **kwargs) (kwargs = precision, rank; no torch_dtype)
                    Entry("img_mod.1", "W4A16", True, quant_kwargs=True),
                    Entry("txt_mod.1", "W4A16", True, quant_kwargs=True),
                ),
                # NunchakuQwenAttention keeps norm_q/norm_k/norm_added_q/norm_added_k;
                # img_norm1/2, txt_norm1/2 are LayerNorms without parameters.
                (r"attn\.norm_(added_)?[qk]\.weight",),
            ),
        ),
    ),
    # NunchakuSDXLUNet2DConditionModel.from_pretrained: _patch_model(precision, rank),
    # convert_sdxl_state_dict, load_state_dict (strict); NO patch_scale_key.
    # BasicTransformerBlock: Attention(bias=attention_bias=False), to_out[0] out_bias=True,
    # FeedForward (GEGLU proj and net[2]) bias=True.
    "sdxl": Family(
        loader=_SDXL,
        loader_fn="NunchakuSDXLUNet2DConditionModel.from_pretrained",
        convert=("nunchaku.models.unets.unet_sdxl", "convert_sdxl_state_dict"),
        patch_scale_key=False,
        blocks=(
            Block(
                r"(?:(?:down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+)\.transformer_blocks\.\d+",
                (
                    # unet_sdxl.py NunchakuSDXLAttention.__init__ (self-attention): from_linear(fuse_linears([to_q, to_k, to_v]))
                    Entry("attn1.to_qkv", "W4A4", False),
                    # ... to_out[0] = from_linear(to_out[0])
                    Entry("attn1.to_out.0", "W4A4", True),
                    # unet_sdxl.py NunchakuSDXLAttention.__init__ (cross-attention): from_linear(orig_attn.to_q); to_k/to_v stay 16-bit
                    Entry("attn2.to_q", "W4A4", False),
                    Entry("attn2.to_out.0", "W4A4", True),
                    # unet_sdxl.py NunchakuSDXLFeedForward.__init__ (_patch_linear; act_unsigned not set)
                    Entry("ff.net.0.proj", "W4A4", True),
                    Entry("ff.net.2", "W4A4", True),
                ),
                # NunchakuSDXLTransformerBlock keeps norm1/norm2/norm3 (LayerNorm) and attn2.to_k/to_v (no bias).
                (r"norm[123]\.(weight|bias)", r"attn2\.to_[kv]\.weight"),
            ),
        ),
    ),
    # NunchakuZImageTransformer2DModel.from_pretrained: _patch_model(skip_refiners, precision, rank),
    # no key conversion, patch_scale_key, load_state_dict (strict).
    # ZImageTransformerBlock: Attention(bias=False, out_bias=False); feed_forward converted by
    # _convert_z_image_ff to FeedForward(activation_fn="swiglu", bias=False).
    "z-image": Family(
        loader=_ZI,
        loader_fn="NunchakuZImageTransformer2DModel.from_pretrained",
        convert=None,
        patch_scale_key=True,
        blocks=(
            Block(
                # _patch_model: layers always; noise_refiner / context_refiner unless
                # quantization_config.skip_refiners (handled in refiner_skipped()).
                r"(?:layers|noise_refiner|context_refiner)\.\d+",
                (
                    # transformer_zimage.py NunchakuZImageAttention.__init__: from_linear(fuse_linears([to_q, to_k, to_v]))
                    Entry("attention.to_qkv", "W4A4", False),
                    # ... to_out[0] = from_linear(to_out[0])
                    Entry("attention.to_out.0", "W4A4", False),
                    # transformer_zimage.py NunchakuZImageFeedForward.__init__ -> NunchakuSDXLFeedForward (_patch_linear)
                    Entry("feed_forward.net.0.proj", "W4A4", False),
                    Entry("feed_forward.net.2", "W4A4", False),
                ),
                # The block keeps attention.norm_q/norm_k, attention_norm1/2, ffn_norm1/2 (RMSNorm)
                # and adaLN_modulation (16-bit Linear with bias).
                (
                    r"attention\.norm_[qk]\.weight",
                    r"(attention|ffn)_norm[12]\.weight",
                    r"adaLN_modulation\.0\.(weight|bias)",
                ),
            ),
        ),
    ),
}

QUANT_SUFFIXES = {
    "qweight", "wscales", "wzeros", "wcscales", "wtscale", "smooth", "smooth_orig",
    "smooth_factor", "smooth_factor_orig", "lora_down", "lora_up", "proj_down", "proj_up",
}


def refiner_skipped(family, block_prefix, qconfig):
    """transformer_zimage.py _patch_model: with skip_refiners the refiner blocks stay 16-bit."""
    return (
        family == "z-image"
        and bool(qconfig.get("skip_refiners", False))
        and block_prefix.startswith(("noise_refiner.", "context_refiner."))
    )


# --------------------------------------------------------------------------
# Stub modules
# --------------------------------------------------------------------------


def _stub_class(qualname, module_name):
    name = qualname.rsplit(".", 1)[-1]

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{qualname} is a strict-load.py stub and cannot be instantiated")

    return type(name, (object,), {"__module__": module_name, "__init__": __init__, "__qualname__": name})


class _Anything:
    """Any non-class attribute of a permissive stub (diffusers, huggingface_hub):
    attribute access gives another one, calling it with one callable returns that
    callable (so it works as a decorator), any other call gives another one."""

    def __init__(self, qualname, module_name):
        self._qualname = qualname
        self._module_name = module_name

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _permissive_attr(f"{self._qualname}.{name}", self._module_name, name)

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return _Anything(f"{self._qualname}()", self._module_name)

    def __mro_entries__(self, bases):
        return (_stub_class(self._qualname, self._module_name),)

    def __or__(self, other):  # annotations such as `str | stub.thing | None`
        return self

    __ror__ = __or__

    def __repr__(self):
        return f"<strict-load stub {self._qualname}>"


def _permissive_attr(qualname, module_name, name):
    if name[:1].isupper():
        return _stub_class(qualname, module_name)
    return _Anything(qualname, module_name)


def _raising_attr(qualname, module_name, name):
    if name[:1].isupper():
        return _stub_class(qualname, module_name)

    def stub(*args, **kwargs):
        raise RuntimeError(f"{qualname} is a strict-load.py stub: this check never runs nunchaku's kernels")

    stub.__name__ = stub.__qualname__ = name
    stub.__module__ = module_name
    return stub


class _StubModule(types.ModuleType):
    def __init__(self, name, mode):
        super().__init__(name)
        self.__dict__["_strict_load_mode"] = mode

    def __getattr__(self, name):
        if name == "__version__" and self._strict_load_mode == "permissive":
            return "0+strict-load-stub"
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        make = _permissive_attr if self._strict_load_mode == "permissive" else _raising_attr
        value = make(f"{self.__name__}.{name}", self.__name__, name)
        self.__dict__[name] = value  # the same object on every access
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Claims every module at or under the given prefixes and makes it a stub package."""

    def __init__(self, prefixes):
        self.prefixes = dict(prefixes)  # prefix -> "permissive" | "raising"

    def _mode(self, fullname):
        for prefix, mode in self.prefixes.items():
            if fullname == prefix or fullname.startswith(prefix + "."):
                return mode
        return None

    def find_spec(self, fullname, path=None, target=None):
        if self._mode(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return _StubModule(spec.name, self._mode(spec.name))

    def exec_module(self, module):
        pass


def _path_package(name, directory):
    """A package whose submodules import from `directory` but whose __init__.py never runs."""
    module = types.ModuleType(name)
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [directory]
    module.__spec__ = spec
    module.__path__ = [directory]
    module.__package__ = name
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


class Nunchaku:
    """nunchaku's Python sources imported from a source tree, without building nunchaku."""

    def __init__(self, tree):
        tree = os.path.abspath(tree)
        if os.path.isfile(os.path.join(tree, "nunchaku", "models", "linear.py")):
            pkg = os.path.join(tree, "nunchaku")
        elif os.path.isfile(os.path.join(tree, "models", "linear.py")) and os.path.basename(tree) == "nunchaku":
            pkg, tree = tree, os.path.dirname(tree)
        else:
            raise UsageError(f"--nunchaku {tree}: no nunchaku/models/linear.py under it")
        self.tree, self.pkg = tree, pkg
        self.linear_path = os.path.join(pkg, "models", "linear.py")

        for name in [n for n in sys.modules if n == "nunchaku" or n.startswith("nunchaku.")]:
            del sys.modules[name]
        stubs = {
            # compiled ops and nunchaku/utils.py (safetensors, hub downloads, GPU queries): raise if called
            "nunchaku._C": "raising",
            "nunchaku.ops": "raising",
            "nunchaku.utils": "raising",
            # not installed here (or not wanted): dummy classes, identity decorators
            "diffusers": "permissive",
            "huggingface_hub": "permissive",
        }
        for optional in ("packaging",):  # nunchaku/models/embeddings.py: packaging.version.Version
            if importlib.util.find_spec(optional) is None:
                stubs[optional] = "permissive"
        for name in [n for n in sys.modules if any(n == p or n.startswith(p + ".") for p in stubs)]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StubFinder(stubs))

        models = os.path.join(pkg, "models")
        _path_package("nunchaku", pkg)
        _path_package("nunchaku.models", models)
        _path_package("nunchaku.models.transformers", os.path.join(models, "transformers"))
        _path_package("nunchaku.models.unets", os.path.join(models, "unets"))
        try:
            self.linear = _load_by_path("nunchaku.models.linear", self.linear_path)
            self.SVDQW4A4Linear = self.linear.SVDQW4A4Linear
            self.AWQW4A16Linear = self.linear.AWQW4A16Linear
        except Exception as e:  # noqa: BLE001 - report any import failure
            raise UsageError(f"cannot import {self.linear_path}: {type(e).__name__}: {e}") from e

    def rel(self, path):
        return os.path.relpath(path, self.tree)

    def function(self, module_name, function_name):
        """Import a real function of the tree, e.g. convert_flux_state_dict."""
        try:
            module = importlib.import_module(module_name)
            fn = getattr(module, function_name)
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"cannot import {function_name} from {module_name} in {self.pkg}: "
                f"{type(e).__name__}: {e} (strict-load.py does not reimplement nunchaku's loaders)"
            ) from e
        return fn, inspect.getsourcefile(fn)


# --------------------------------------------------------------------------
# Safetensors reading
# --------------------------------------------------------------------------

_ST_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class SafetensorsFile:
    def __init__(self, path, torch, reader="auto"):
        self.path, self.torch = path, torch
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise ValueError("shorter than 8 bytes")
                (n,) = struct.unpack("<Q", raw)
                if n > size - 8 or n > 100 << 20:
                    raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
                header = json.loads(f.read(n))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable safetensors file: {e}") from e
        if not isinstance(header, dict):
            raise UsageError(f"{path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries = header
        for key, e in header.items():
            try:
                begin, end = e["data_offsets"]
                e["shape"] = [int(d) for d in e["shape"]]
                if not (0 <= begin <= end <= size - self.data_start) or e["dtype"] not in _ST_DTYPES:
                    raise ValueError
            except (KeyError, TypeError, ValueError) as err:
                raise UsageError(f"{path}: bad header entry for {key!r}: {e!r}") from err

        self._st = None
        if reader in ("auto", "safetensors"):
            try:
                from safetensors import safe_open
            except ImportError:
                if reader == "safetensors":
                    raise UsageError("--reader safetensors: the safetensors package is not importable")
            else:
                self._st = safe_open(path, framework="pt", device="cpu").__enter__()
        self.reader = "safetensors package" if self._st is not None else "built-in parser"

    def keys(self):
        return list(self.entries)

    def dtype_str(self, key):
        return self.entries[key]["dtype"]

    def shape(self, key):
        return list(self.entries[key]["shape"])

    def torch_dtype(self, key):
        name = _ST_DTYPES[self.dtype_str(key)]
        dt = getattr(self.torch, name, None)
        if dt is None:
            raise UsageError(f"{key}: this torch has no {name} (safetensors {self.dtype_str(key)})")
        return dt

    def get(self, key):
        if self._st is not None:
            return self._st.get_tensor(key)
        e = self.entries[key]
        dt, shape = self.torch_dtype(key), e["shape"]
        begin, end = e["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        if count == 0:
            return self.torch.empty(shape, dtype=dt)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            buf = bytearray(f.read(end - begin))
        t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
        if t.numel() != count * self.torch.empty((), dtype=dt).element_size():
            raise UsageError(f"{key}: {end - begin} bytes do not hold {shape} {e['dtype']}")
        return t.view(dt).reshape(shape)


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------


def natural_key(s):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def precision_from(args, qconfig):
    """--precision, else quantization_config.weight.dtype (as nunchaku/utils.py
    get_precision_from_quantization_config maps it)."""
    wdtype = (qconfig.get("weight") or {}).get("dtype") if isinstance(qconfig.get("weight"), dict) else None
    from_file = {"int4": "int4", "fp4_e2m1_all": "nvfp4"}.get(wdtype)
    if args.precision:
        note = ""
        if from_file and from_file != args.precision:
            note = f" (WARNING: quantization_config.weight.dtype is {wdtype!r} = {from_file})"
        return args.precision, f"--precision{note}"
    if from_file is None:
        raise UsageError(
            f"cannot tell the precision: quantization_config.weight.dtype is {wdtype!r}; pass --precision int4|nvfp4"
        )
    return from_file, f"quantization_config.weight.dtype = {wdtype!r}"


def loader_source_check(nk, fam):
    """Warn when the loader source no longer matches the table's fix-up/rename facts."""
    warnings = []
    path = os.path.join(nk.tree, fam.loader)
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
    except OSError as e:
        return [f"cannot read the loader {fam.loader}: {e}"]
    calls = "patch_scale_key(" in src
    if calls != fam.patch_scale_key:
        warnings.append(
            f"{fam.loader} {'calls' if calls else 'does not call'} patch_scale_key; this script's table says otherwise"
        )
    if fam.convert and f"{fam.convert[1]}(" not in src:
        warnings.append(f"{fam.loader} does not mention {fam.convert[1]}(; this script's table says it renames keys")
    return warnings


def format_exc(e):
    return f"{type(e).__name__}: {e}".rstrip()


def patch_scale_key_failure(e):
    """Describe an AssertionError raised inside nunchaku's patch_scale_key from its frame."""
    tb, where, k, model_sd, file_sd = e.__traceback__, None, None, None, None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "patch_scale_key":
            line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno).strip()
            where = f"{os.path.basename(frame.f_code.co_filename)}:{tb.tb_lineno}: {line}"
            k = frame.f_locals.get("k")
            model_sd = frame.f_locals.get("state_dict")
            file_sd = frame.f_locals.get("state_dict_from_checkpoint")
        tb = tb.tb_next
    if where is None:
        return format_exc(e)
    detail = ""
    if k is not None and model_sd is not None and file_sd is not None:
        if k not in file_sd:
            detail = f" -- key {k!r} is missing from the file and is not a .wcscales"
        else:
            detail = f" -- key {k!r}: model {model_sd[k].dtype}, file {file_sd[k].dtype}"
    return f"{type(e).__name__} at {where}{detail}"


class Checker:
    def __init__(self, args, torch, nk, st):
        self.args, self.torch, self.nk, self.st = args, torch, nk, st
        self.fam = FAMILIES[args.family]
        self.model_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        md = st.metadata
        try:
            self.qconfig = json.loads(md.get("quantization_config", "{}") or "{}")
        except json.JSONDecodeError as e:
            raise UsageError(f"metadata quantization_config is not JSON: {e}") from e
        if not isinstance(self.qconfig, dict):
            self.qconfig = {}
        # every loader: rank = quantization_config.get("rank", 32)
        self.rank = int(self.qconfig.get("rank", 32))
        self.precision, self.precision_src = precision_from(args, self.qconfig)
        if self.precision == "nvfp4" and not hasattr(torch, "float8_e4m3fn"):
            raise UsageError(f"torch {torch.__version__} has no float8_e4m3fn, which nvfp4 layers need")
        sig = inspect.signature(nk.AWQW4A16Linear.from_linear).parameters
        self.awq_dtype = sig["torch_dtype"].default if "torch_dtype" in sig else self.model_dtype

        self.convert_fn = self.convert_src = None
        if self.fam.convert:
            self.convert_fn, self.convert_src = nk.function(*self.fam.convert)
        self.patch_fn = self.patch_src = None
        self.patch_note = ""
        if self.fam.patch_scale_key:
            try:
                self.patch_fn, self.patch_src = nk.function("nunchaku.models.transformers.utils", "patch_scale_key")
            except UsageError as e:
                self.patch_note = f"(real one not importable, using this script's mimic: {e})"

    # -- keys ------------------------------------------------------------
    def renamed_keys(self):
        """new key -> file key, through the loader's real rename function."""
        keys = self.st.keys()
        if self.convert_fn is None:
            return {k: k for k in keys}
        # The rename functions only move values to new keys, so pass the file keys
        # as values: no tensor has to be read to learn the renaming.
        out = self.convert_fn({k: k for k in keys})
        if not isinstance(out, dict) or not all(isinstance(v, str) and v in self.st.entries for v in out.values()):
            raise UsageError(f"{self.fam.convert[1]} did more than rename keys; strict-load.py cannot follow it")
        if len(set(out.values())) != len(out) or len(out) != len(keys):
            raise UsageError(f"{self.fam.convert[1]} merged or dropped keys; strict-load.py cannot follow it")
        return out

    # -- modules ---------------------------------------------------------
    def build(self, entry, q_shape):
        """Build the module as the loader does: from_linear on a meta nn.Linear of the
        model dtype (its widths from the file's qweight), then to_empty."""
        nn = self.torch.nn
        if entry.cls == "W4A4":
            out_f, in_f = q_shape[0], 2 * q_shape[1]  # qweight [out, in/2]
            lin = nn.Linear(in_f, out_f, bias=entry.bias, dtype=self.model_dtype, device="meta")
            m = self.nk.SVDQW4A4Linear.from_linear(lin, precision=self.precision, rank=self.rank)
            m = m.to_empty(device="cpu")
            if entry.act_unsigned == "int4":
                m.act_unsigned = m.precision != "nvfp4"
            return m
        out_f, in_f = 4 * q_shape[0], 2 * q_shape[1]  # qweight [out/4, in/2]
        lin = nn.Linear(in_f, out_f, bias=entry.bias, dtype=self.model_dtype, device="meta")
        kwargs = {"precision": self.precision, "rank": self.rank} if entry.quant_kwargs else {}
        return self.nk.AWQW4A16Linear.from_linear(lin, **kwargs)

    def describe(self, entry, m=None):
        if m is None:
            return f"{'SVDQW4A4Linear' if entry.cls == 'W4A4' else 'AWQW4A16Linear'} bias={entry.bias}"
        if entry.cls == "W4A4":
            return (
                f"{type(m).__name__} in={m.in_features} out={m.out_features} rank={m.rank} "
                f"bias={m.bias is not None} precision={m.precision} act_unsigned={m.act_unsigned} "
                f"dtype={str(m.proj_down.dtype).replace('torch.', '')}"
            )
        return (
            f"{type(m).__name__} in={m.in_features} out={m.out_features} group={m.group_size} "
            f"bias={m.bias is not None} dtype={str(m.wscales.dtype).replace('torch.', '')}"
        )

    def mimic_patch_scale_key(self, root, sd):
        """Only when the real patch_scale_key cannot be imported, or to finish its fix-ups
        after it failed: the same steps as transformers/utils.py patch_scale_key."""
        model_sd = root.state_dict()
        for k in model_sd:
            if k not in sd and ".wcscales" in k:
                sd[k] = self.torch.ones_like(model_sd[k])
        for n, m in root.named_modules():
            if isinstance(m, self.nk.SVDQW4A4Linear) and m.wtscale is not None:
                m.wtscale = sd.pop(f"{n}.wtscale", 1.0)

    def check_layer(self, prefix, entry, new_to_file):
        """Returns (ok, description, [error lines], [note lines])."""
        torch = self.torch
        keys = sorted(k for k in new_to_file if k.startswith(prefix + "."))
        errors, notes = [], []
        qkey = prefix + ".qweight"
        if qkey not in new_to_file:
            found = ", ".join(k[len(prefix) + 1:] for k in keys) or "none"
            return False, self.describe(entry), [
                f"no {qkey} in the file (after the loader's renames); keys under the prefix: {found}"
            ], notes
        q_shape = self.st.shape(new_to_file[qkey])
        if len(q_shape) != 2:
            return False, self.describe(entry), [f"{qkey} has shape {q_shape}, not 2-D"], notes
        try:
            m = self.build(entry, q_shape)
        except Exception as e:  # noqa: BLE001
            return False, self.describe(entry), [f"building the module: {format_exc(e)}"], notes
        desc = self.describe(entry, m)

        sd = {k: self.st.get(new_to_file[k]) for k in keys}
        root = torch.nn.Module()
        parent, parts = root, prefix.split(".")
        for p in parts[:-1]:
            child = torch.nn.Module()
            parent.add_module(p, child)
            parent = child
        parent.add_module(parts[-1], m)

        if self.fam.patch_scale_key:
            # The loader calls patch_scale_key(model, state_dict) before load_state_dict:
            # missing .wcscales -> ones, dtype equality asserted, .wtscale popped (nvfp4).
            if self.patch_fn is not None:
                try:
                    self.patch_fn(root, sd)
                except AssertionError as e:
                    errors.append(f"patch_scale_key: {patch_scale_key_failure(e)}")
                    self.mimic_patch_scale_key(root, sd)  # finish its fix-ups to show the load error too
            else:
                model_sd = root.state_dict()
                for k in model_sd:
                    if k not in sd and ".wcscales" not in k:
                        errors.append(f"patch_scale_key (mimic): {k} missing from the file and not a .wcscales")
                self.mimic_patch_scale_key(root, sd)
            # the dtype comparison patch_scale_key asserts, for every key (it stops at the first)
            for k, v in m.state_dict().items():
                fk = f"{prefix}.{k}"
                if fk in sd and sd[fk].dtype != v.dtype:
                    errors.append(f"dtype (patch_scale_key asserts equality): {k}: model {v.dtype}, file {sd[fk].dtype}")
        else:
            for k, v in m.state_dict().items():
                fk = f"{prefix}.{k}"
                if fk in sd and sd[fk].dtype != v.dtype:
                    notes.append(f"note: {k}: file {sd[fk].dtype} is cast to the model's {v.dtype} "
                                 f"(this loader does not compare dtypes)")

        sub = {k[len(prefix) + 1:]: v for k, v in sd.items()}
        try:
            m.load_state_dict(sub, strict=True)
        except Exception as e:  # noqa: BLE001
            errors.append(f"load_state_dict: {format_exc(e)}")
        return not errors, desc, errors, notes

    def run(self):
        args, fam, nk, st = self.args, self.fam, self.nk, self.st
        print(f"strict-load: {args.file} ({len(st.keys())} tensors, read with the {st.reader})")
        print(f"  nunchaku: {nk.tree}")
        print(f"    classes: {nk.SVDQW4A4Linear.__module__}.SVDQW4A4Linear, AWQW4A16Linear from {nk.linear_path}")
        print(f"  family {args.family}: loader {fam.loader} {fam.loader_fn}")
        mc = st.metadata.get("model_class")
        if mc:
            print(f"    file metadata model_class: {mc}")
        print(f"  model dtype {args.dtype}; W4A16 layers {str(self.awq_dtype).replace('torch.', '')} "
              f"(AWQW4A16Linear.from_linear's default torch_dtype; the loaders pass none)")
        print(f"  precision {self.precision} ({self.precision_src}); rank {self.rank} "
              f"(quantization_config.rank{'' if 'rank' in self.qconfig else ' absent: loader default 32'})")
        if self.convert_fn is not None:
            print(f"  key renames: {self.fam.convert[1]} from {nk.rel(self.convert_src)} (nunchaku's own)")
        else:
            print("  key renames: none (the loader loads the file's keys as they are)")
        if fam.patch_scale_key:
            src = f"patch_scale_key from {nk.rel(self.patch_src)} (nunchaku's own)" if self.patch_fn else self.patch_note
            print(f"  pre-load fix-up: {src}; dtypes compared as it asserts")
        else:
            print("  pre-load fix-up: none (the loader calls no patch_scale_key; load_state_dict casts dtypes)")
        for w in loader_source_check(nk, fam):
            print(f"  WARNING: {w}")
        if args.family == "z-image" and self.qconfig.get("skip_refiners"):
            print("  quantization_config.skip_refiners: noise_refiner / context_refiner blocks stay 16-bit")
        print()

        new_to_file = self.renamed_keys()
        renamed = sum(1 for n, f in new_to_file.items() if n != f)
        if self.convert_fn is not None:
            print(f"{renamed} of {len(new_to_file)} keys renamed by {self.fam.convert[1]}")

        # blocks present in the file, per block kind
        layers = []  # (block prefix, entry)
        block_of = {}  # key -> (block prefix, Block)
        for blk in fam.blocks:
            rx = re.compile(rf"^({blk.pattern})\.")
            prefixes = set()
            for k in new_to_file:
                mt = rx.match(k)
                if mt:
                    prefixes.add(mt.group(1))
                    block_of.setdefault(k, (mt.group(1), blk))
            for bp in sorted(prefixes, key=natural_key):
                if refiner_skipped(args.family, bp + ".", self.qconfig):
                    continue
                layers.extend((bp, e) for e in blk.entries)

        if not layers:
            print(f"FAIL: no {args.family} transformer block found in the file "
                  f"(block patterns: {', '.join(b.pattern for b in fam.blocks)})")
            return EXIT_FAIL

        n_ok = n_fail = 0
        counts = {"W4A4": 0, "W4A16": 0}
        module_prefixes = set()
        print(f"{len(layers)} quantized layers expected by the loader:")
        for bp, entry in layers:
            prefix = f"{bp}.{entry.rel}"
            module_prefixes.add(prefix)
            counts[entry.cls] += 1
            ok, desc, errors, notes = self.check_layer(prefix, entry, new_to_file)
            src = new_to_file.get(prefix + ".qweight", "")
            renamed_from = ""
            if src and src != prefix + ".qweight":
                renamed_from = f" (file: {src[: -len('.qweight')]})"
            print(f"{'OK  ' if ok else 'FAIL'}  {prefix}{renamed_from}  {desc}")
            for err in errors + notes:
                lines = err.splitlines() or [""]
                print(f"      {lines[0]}")
                for line in lines[1:]:
                    print(f"        {line.strip()}")
            n_ok += ok
            n_fail += not ok

        # tensors under block prefixes that belong to no quantized module and to no
        # 16-bit module the nunchaku block keeps: unexpected keys in a strict whole-model load
        stray = []
        for k in sorted(new_to_file, key=natural_key):
            if k not in block_of or any(k.startswith(p + ".") for p in module_prefixes):
                continue
            bp, blk = block_of[k]
            if refiner_skipped(args.family, bp + ".", self.qconfig):
                continue
            rel = k[len(bp) + 1:]
            if any(re.fullmatch(rx, rel) for rx in blk.kept):
                continue
            stray.append(k)
        print()
        if stray:
            print(f"WARNING: {len(stray)} tensors under transformer-block prefixes belong to no quantized module "
                  f"and to no 16-bit module the nunchaku block keeps (unexpected keys in a strict whole-model load):")
            for k in stray:
                fk = new_to_file[k]
                tag = " [quantized-layer tensor]" if k.rsplit(".", 1)[-1] in QUANT_SUFFIXES else ""
                frm = f" (file: {fk})" if fk != k else ""
                print(f"  {k}{frm} {st.dtype_str(fk)} {st.shape(fk)}{tag}")
            print()
        print(f"{n_ok + n_fail} layers ({counts['W4A4']} SVDQW4A4Linear, {counts['W4A16']} AWQW4A16Linear): "
              f"{n_ok} OK, {n_fail} FAIL; {len(stray)} stray tensors warned")
        return EXIT_OK if n_fail == 0 else EXIT_FAIL


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="strict-load.py",
        description="Strict-load every quantized layer of an svdq .safetensors file into nunchaku's own layer classes.",
        epilog="exit status: 0 every layer loads, 1 a layer fails, 2 bad usage / cannot run",
    )
    p.add_argument("--nunchaku", required=True, metavar="TREE",
                   help="nunchaku source tree (the repository root, or its nunchaku/ package folder)")
    p.add_argument("--family", required=True, choices=sorted(FAMILIES))
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16",
                   help="model torch_dtype passed to the loader (its default: bf16)")
    p.add_argument("--precision", choices=("int4", "nvfp4"),
                   help="default: from the file's quantization_config.weight.dtype")
    p.add_argument("--reader", choices=("auto", "safetensors", "builtin"), default="auto",
                   help="tensor reader: the safetensors package if importable (auto), or the built-in parser")
    p.add_argument("file", metavar="FILE.safetensors")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)  # exits 2 on bad usage
    try:
        if not os.path.isfile(args.file):
            raise UsageError(f"{args.file}: no such file")
        try:
            import torch
        except ImportError as e:
            raise UsageError(f"PyTorch is not importable: {e}") from e
        nk = Nunchaku(args.nunchaku)
        st = SafetensorsFile(args.file, torch, args.reader)
        checker = Checker(args, torch, nk, st)
        code = checker.run()
    except UsageError as e:
        print(f"strict-load.py: {e}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
