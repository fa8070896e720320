package engine

// Metadata keys the loaders read (values are strings; JSON where noted).
const (
	MetaConfig             = "config"              // diffusers config.json text
	MetaQuantizationConfig = "quantization_config" // JSON: method, weight/activation dtypes, rank
	MetaComfyConfig        = "comfy_config"        // JSON: model_class, model_config (ComfyUI-nunchaku FLUX)
	MetaModelClass         = "model_class"
)

var (
	needT5Config = MetaNeed{Key: MetaConfig, Need: Required,
		Why: "T5Config(**json.loads(metadata[\"config\"])) builds the T5EncoderModel (t5_encoder.py from_pretrained)"}
	needConfig = MetaNeed{Key: MetaConfig, Need: Required,
		Why: "json.loads(metadata[\"config\"]) builds the diffusers model (transformers/utils.py _build_model)"}
	needQCRank = MetaNeed{Key: MetaQuantizationConfig, Need: Optional,
		Why: "quantization_config.get(\"rank\", 32) sizes every W4A4 module"}
)

// table is the loader contract, one row per engine × family. Sources are
// nunchaku at 3a3cc3d and ComfyUI-nunchaku at dbfd194 (Commits).
var table = []*Contract{
	{
		Engine: CPP, Family: "flux", Loader: "nunchaku NunchakuFluxTransformer2dModel.from_pretrained (V1)",
		Source: []string{
			"nunchaku nunchaku/models/transformers/transformer_flux.py from_pretrained (block keys to C++ loadDict partial=True; the rest load_state_dict strict=False)",
			"nunchaku src/FluxModel.cpp FluxModel::FluxModel (19×JointTransformerBlock, 38×FluxSingleTransformerBlock, dim 3072 hard-coded)",
			"nunchaku src/Linear.cpp GEMM_W4A4 (qweight, wscales, bias, lora_down/lora_up optional, smooth, wtscale/wcscales optional; in/out padded to 128; rank = lora_down.shape[1])",
			"nunchaku src/kernels/zgemm/gemm_w4a4_launch_impl.cuh (rank % 16 == 0; fc1/fc2 share the lora_act buffer)",
			"nunchaku nunchaku/utils.py check_hardware_compatibility (reads quantization_config.weight.dtype)",
		},
		Naming: CPPNames, Strict: false, Padded: true, BiasAlways: true, Rank: RankPerLayer, DType: DTypeCast,
		SmoothOrig: Ignored, WTScale: Optional, WCScales: Optional, W4A16Branch: Optional,
		Reserved: "loaded into the PyTorch part with strict=False at first, but update_lora_params' strict reload (_update_unquantized_part_lora_params) fails on them",
		Meta: []MetaNeed{needConfig,
			{Key: MetaQuantizationConfig, Need: Required, Why: "metadata[\"quantization_config\"][\"weight\"][\"dtype\"] is checked against the GPU"}},
		Fixed: &Fixed{Width: 3072, Blocks: map[string]int{"transformer_blocks": 19, "single_transformer_blocks": 38}},
		Notes: "the precision comes from the GPU; runtime LoRA strength (set_lora_strength) assumes a base rank of 32",
	},
	{
		Engine: Python, Family: "flux", Loader: "nunchaku NunchakuFluxTransformer2DModelV2.from_pretrained (V2)",
		Source: []string{
			"nunchaku nunchaku/models/transformers/transformer_flux_v2.py from_pretrained, convert_flux_state_dict (renames C++ names; strict load)",
			"nunchaku nunchaku/models/transformers/utils.py patch_scale_key (exact dtype per key; only wcscales may be missing; wtscale popped)",
			"nunchaku nunchaku/models/linear.py SVDQW4A4Linear, AWQW4A16Linear (exact in/out; proj_down [in, rank])",
			"nunchaku nunchaku/models/normalization.py (AWQW4A16Linear.from_linear without torch_dtype: BF16)",
		},
		Naming: CPPNames, Strict: true, Padded: false, BiasAlways: true, Rank: RankUniform, DType: DTypeBF16,
		SmoothOrig: Required, WTScale: Optional, WCScales: Optional, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta:     []MetaNeed{needConfig, needQCRank},
		Notes:    "no runtime LoRA at this commit",
	},
	{
		Engine: CPP, Family: "sana", Loader: "nunchaku NunchakuSanaTransformer2DModel.from_pretrained",
		Source: []string{
			"nunchaku nunchaku/models/transformers/transformer_sana.py from_pretrained (transformer_blocks.* to C++ loadDict partial=True; the rest strict=False)",
			"nunchaku src/SanaModel.cpp (attn.qkv_proj dim→3·dim_pad, no bias; cross_attn.q_linear/out_proj; ff.inverted_conv/point_conv)",
			"nunchaku src/Linear.cpp GEMM_W4A4",
		},
		Naming: CPPNames, Strict: false, Padded: true, BiasAlways: false, Rank: RankPerLayer, DType: DTypeCast,
		SmoothOrig: Ignored, WTScale: Optional, WCScales: Optional, W4A16Branch: Ignored,
		Reserved: "ignored (strict=False)",
		Meta:     []MetaNeed{needConfig},
		Notes: "the model is always built in BF16 on the single-file path; attn.out_proj and ff.point_conv are built without a bias, " +
			"so the engine does not apply the source's attn1.to_out.0 bias (svdq keeps it in the file, where the engine ignores it)",
	},
	{
		Engine: Python, Family: "qwen-image", Loader: "nunchaku NunchakuQwenImageTransformer2DModel.from_pretrained",
		Source: []string{
			"nunchaku nunchaku/models/transformers/transformer_qwenimage.py from_pretrained (no renames; patch_scale_key; strict load_state_dict)",
			"nunchaku nunchaku/models/transformers/utils.py patch_scale_key",
			"nunchaku nunchaku/models/linear.py SVDQW4A4Linear, AWQW4A16Linear",
			"nunchaku nunchaku/models/transformers/transformer_qwenimage.py NunchakuQwenImageTransformerBlock (AWQW4A16Linear.from_linear(img_mod[1], **kwargs) without torch_dtype: BF16)",
		},
		Naming: PythonNames, Strict: true, Padded: false, BiasAlways: false, Rank: RankUniform, DType: DTypeBF16,
		SmoothOrig: Required, WTScale: Optional, WCScales: Optional, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta:     []MetaNeed{needConfig, needQCRank},
		Notes:    "blocks built with scale_shift=0: the modulation bias carries the +1 (as svdq's W4A16 packer writes it)",
	},
	{
		Engine: Python, Family: "sdxl", Loader: "nunchaku NunchakuSDXLUNet2DConditionModel.from_pretrained",
		Source: []string{
			"nunchaku nunchaku/models/unets/unet_sdxl.py from_pretrained, convert_sdxl_state_dict (renames C++ names in .transformer_blocks. keys; strict load)",
			"nunchaku nunchaku/models/unets/unet_sdxl.py NunchakuSDXLAttention, NunchakuSDXLFeedForward",
			"nunchaku nunchaku/models/linear.py SVDQW4A4Linear",
		},
		Naming: CPPNames, Strict: true, Padded: false, BiasAlways: false, Rank: RankUniform, DType: DTypeCast,
		SmoothOrig: Required, WTScale: Forbidden, WCScales: Required, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta:     []MetaNeed{needConfig, needQCRank},
		Notes:    "no patch_scale_key: an NVFP4 wtscale is an unexpected key and wcscales must be present",
	},
	{
		Engine: Python, Family: "z-image", Loader: "nunchaku NunchakuZImageTransformer2DModel.from_pretrained",
		Source: []string{
			"nunchaku nunchaku/models/transformers/transformer_zimage.py from_pretrained, _patch_model (no renames; patch_scale_key; strict load)",
			"nunchaku nunchaku/models/transformers/utils.py patch_scale_key",
		},
		Naming: PythonNames, Strict: true, Padded: false, BiasAlways: false, Rank: RankUniform, DType: DTypeExact,
		SmoothOrig: Required, WTScale: Optional, WCScales: Optional, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta: []MetaNeed{needConfig,
			{Key: MetaQuantizationConfig, Need: Optional, Why: "rank (default 32) and skip_refiners (default false: the refiner blocks are quantized too)"}},
	},
	{
		Engine: ComfyUI, Family: "flux", Loader: "ComfyUI-nunchaku node \"Nunchaku FLUX DiT Loader\" (NunchakuFluxDiTLoader)",
		Source: []string{
			"ComfyUI-nunchaku nodes/models/flux.py NunchakuFluxDiTLoader.load_model (nunchaku's C++ NunchakuFluxTransformer2dModel; json.loads(metadata[\"comfy_config\"]))",
			"ComfyUI-nunchaku nodes/models/configs/flux.1-*.json, shuttle-jaguar.json (comfy_config fields)",
			"ComfyUI-nunchaku wrappers/flux.py ComfyFluxWrapper (config[\"guidance_embed\"])",
			"nunchaku nunchaku/models/transformers/transformer_flux.py from_pretrained (as nunchaku-cpp)",
		},
		Naming: CPPNames, Strict: false, Padded: true, BiasAlways: true, Rank: RankPerLayer, DType: DTypeCast,
		SmoothOrig: Ignored, WTScale: Optional, WCScales: Optional, W4A16Branch: Optional,
		Reserved: "ignored at load, but a LoRA touching 16-bit layers makes nunchaku reload them strictly (_update_unquantized_part_lora_params) and fail on them",
		Meta: []MetaNeed{needConfig,
			{Key: MetaQuantizationConfig, Need: Required, Why: "weight.dtype is checked against the GPU"},
			{Key: MetaComfyConfig, Need: Required, Why: "json.loads(metadata[\"comfy_config\"]): model_class Flux|FluxSchnell and the ComfyUI model_config"}},
		Fixed: &Fixed{Width: 3072, Blocks: map[string]int{"transformer_blocks": 19, "single_transformer_blocks": 38}},
		Notes: "runs the C++ engine; LoRA nodes compose at run time from the tensors' ranks (no rank-32 assumption on this path)",
	},
	{
		Engine: ComfyUI, Family: "qwen-image", Loader: "ComfyUI-nunchaku node \"Nunchaku Qwen-Image DiT Loader\" (NunchakuQwenImageDiTLoader)",
		Source: []string{
			"ComfyUI-nunchaku nodes/models/qwenimage.py load_diffusion_model_state_dict (quantization_config: weight.dtype, rank; scale_shift 0; model.diffusion_model. prefix stripped)",
			"ComfyUI-nunchaku models/qwenimage.py NunchakuQwenImageTransformer2DModel (60 blocks of width 3072 hard-coded; SVDQW4A4Linear / AWQW4A16Linear)",
			"ComfyUI-nunchaku model_base/qwenimage.py NunchakuQwenImage.load_model_weights (only wcscales may be missing; wtscale popped; strict load; dtypes cast)",
		},
		Naming: PythonNames, Strict: true, Padded: false, BiasAlways: false, Rank: RankUniform, DType: DTypeCast,
		SmoothOrig: Required, WTScale: Optional, WCScales: Optional, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta: []MetaNeed{{Key: MetaQuantizationConfig, Need: Required,
			Why: "get_precision_from_quantization_config reads weight.dtype (KeyError without it); rank (default 32) sizes every W4A4 module"}},
		Fixed: &Fixed{Width: 3072, Blocks: map[string]int{"transformer_blocks": 60}},
	},
	{
		Engine: Python, Family: "t5", Loader: "nunchaku NunchakuT5EncoderModel.from_pretrained",
		Source: []string{
			"nunchaku nunchaku/models/text_encoders/t5_encoder.py NunchakuT5EncoderModel.from_pretrained (T5Config from metadata config; W4Linear.from_linear(group_size=128) for every nn.Linear whose qweight the file holds; load_state_dict strict=True)",
			"nunchaku nunchaku/models/text_encoders/linear.py W4Linear.__init__ (qweight int16 [out/4, in], scales and scaled_zeros [ceil_num_groups(in, 128), out] in the module dtype, bias only where the nn.Linear had one; in % 128 == 0, out % 8 == 0)",
			"nunchaku nunchaku/models/text_encoders/tinychat_utils.py ceil_num_groups, pack_w4, convert_to_tinychat_w4x16y16_linear_weight",
			"transformers models/t5/modeling_t5.py T5EncoderModel.__init__ (T5Stack(encoder_config, self.shared): state_dict lists shared.weight and encoder.embed_tokens.weight)",
		},
		Naming: CPPNames, Strict: true, Padded: false, BiasAlways: false, Rank: RankPerLayer, DType: DTypeCast,
		SmoothOrig: Ignored, WTScale: Ignored, WCScales: Ignored, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta:     []MetaNeed{needT5Config},
		Notes: "which linears are 4-bit is the file's choice (qweight present); quantization_config is not read; modules are built in torch_dtype " +
			"(default BF16; load_state_dict casts the file's 16-bit tensors); below 8 tokens W4Linear calls gemv_awq, whose C++ asserts group 64",
	},
	{
		Engine: ComfyUI, Family: "t5", Loader: "ComfyUI-nunchaku node \"Nunchaku Text Encoder Loader V2\" (NunchakuTextEncoderLoaderV2)",
		Source: []string{
			"ComfyUI-nunchaku nodes/models/text_encoder.py load_text_encoder_state_dicts (a file whose metadata model_class is \"NunchakuT5EncoderModel\" is the nunchaku T5; model_type flux.1, exactly two files)",
			"ComfyUI-nunchaku nodes/models/text_encoder.py nunchaku_flux_clip (NunchakuT5EncoderModel.from_pretrained(path, device, torch_dtype = ComfyUI's pick_weight_dtype))",
			"nunchaku nunchaku/models/text_encoders/t5_encoder.py from_pretrained (as nunchaku-python)",
		},
		Naming: CPPNames, Strict: true, Padded: false, BiasAlways: false, Rank: RankPerLayer, DType: DTypeCast,
		SmoothOrig: Ignored, WTScale: Ignored, WCScales: Ignored, W4A16Branch: Forbidden,
		Reserved: "unexpected keys in the strict load_state_dict",
		Meta: []MetaNeed{needT5Config,
			{Key: MetaModelClass, Need: Required, Value: "NunchakuT5EncoderModel",
				Why: "metadata.get(\"model_class\") == \"NunchakuT5EncoderModel\" tells the nunchaku T5 from a 16-bit one, which clip.load_sd would load instead"}},
		Notes: "FLUX.1 only, next to a CLIP-L file; the T5 runs in ComfyUI's CLIP dtype; needs CUDA; the deprecated NunchakuTextEncoderLoader lists folders, which from_pretrained cannot open as a file (not run)",
	},
}
