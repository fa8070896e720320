// Package engine holds the loader contract: for every engine that runs
// SVDQuant checkpoints (nunchaku's C++ models, nunchaku's Python model
// classes, ComfyUI-nunchaku) and every model family it runs, what its
// loader reads from a .safetensors file: the quantized modules and their
// tensor names, which tensors are required, optional or fatal, shapes
// (padded or exact), the low-rank rank rule, the 16-bit dtype rule and the
// metadata keys. Each row cites the loader file and function it was read
// from, at the commits in Commits.
//
// One table serves everyone: quantize and convert write through Layout
// (derived from the contracts of the target engines), inspect reports
// Check's verdict per engine ("loads in" / "does not load in … because"),
// and the tests check files against the same rows. There is no
// `if engine == …` elsewhere: a loader difference is a field here.
//
// Tensor names of a quantized layer "p" are p + "." + suffix. The C++
// engine reads smooth, lora_down, lora_up (smooth_orig is not read);
// nunchaku's Python SVDQW4A4Linear has smooth_factor, smooth_factor_orig,
// proj_down, proj_up. FLUX V2 and SDXL rename C++ names to Python ones on
// load (convert_flux_state_dict, convert_sdxl_state_dict) and would mangle
// Python names (smooth_factor → smooth_factor_factor), so their files carry
// the C++ names; Qwen-Image and Z-Image load Python names unchanged.
//
// nunchaku's 4-bit T5 encoder (family "t5") has no W4A4 layer: its
// quantized linears are W4Linear modules (kind w4a16g128: qweight I16,
// scales, scaled_zeros), and which linears are quantized is decided by
// the file (a linear without qweight stays a 16-bit nn.Linear).
package engine
