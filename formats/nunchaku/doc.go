// Package nunchaku packs SVDQuant layers into the tensor layout the nunchaku
// engine loads, unpacks them bit for bit, and reads and writes the checkpoint
// metadata (quantization_config and our own "svdq" entry).
//
// Sources. The layouts follow nunchaku's NunchakuWeightPacker
// (nunchaku/lora/flux/packer.py: pack_weight, pack_scale, pack_micro_scale,
// pack_lowrank_weight), deepcompressor's converter
// (deepcompressor/backend/nunchaku/{utils,convert}.py and
// backend/tinychat/utils.py for W4A16), the C++ loader src/Linear.cpp
// (GEMM_W4A4, GEMV_AWQ: tensor names, dtypes, shapes), nunchaku's T5
// encoder (nunchaku/models/text_encoders/{t5_encoder,linear,
// tinychat_utils}.py) and nunchaku/merge_safetensors.py
// (quantization_config), as restated in the
// workspace spec nunchaku-format.md. The code here is written from those
// descriptions; the tests check it against index tables built independently
// from the spec text.
//
// W4A4 layer (suffixes qweight, wscales, wtscale, bias, smooth, smooth_orig,
// lora_down, lora_up). N and K are zero-padded to multiples of 128, R to a
// multiple of 16. Indices below are of the padded logical arrays.
//
//	qweight  I8 [N, K/2]: code (n,k), n = nt·128+p·16+a·8+g, k = kt·64+b·32+c·8+e,
//	         memory order nt,kt,p,g,c,a,b,e; e = 0..7 are the nibbles of one
//	         little-endian uint32 (value e in bits 4e..4e+3).
//	wscales  INT4: model dtype [K/64, N]; scale (n,grp), n = nt·128+x·16+y·8+c·2+d,
//	         order nt,grp,x,c,y,d (padding 1).
//	         NVFP4: F8_E4M3 [K/16, N]; n = nt·128+s·32+x·8+y, grp = kt·4+j,
//	         order nt,kt,y,x,s,j (padding 1.0 = 0x38).
//	bias, smooth, smooth_orig  model dtype [N] / [K]: the INT4 scale order
//	         with one group (bias padding 0, smooth padding 1).
//	lora_down  model dtype [K, R]: logical Down [R, K] in 16×16 tiles, K-tile
//	         outer, R-tile inner; lora_up [N, R]: logical Up [N, R], N-tile
//	         outer, R-tile inner. In a tile row = a·8+g, col = b·8+c·2+e,
//	         order g,c,a,b,e.
//	wtscale  NVFP4 only: F32 [1], the per-tensor weight scale.
//
// W4A16 layer (adaLN modulation; qweight, wscales, wzeros, bias): rows
// interleaved by output chunk (new row j·c+s = old row s·m+j), bias +1 on
// chunks 1 and c−2, codes packed as 16-bit words
// q[j] | q[j+8]<<4 | q[j+16]<<8 | q[j+24]<<12 in order t,chunk,u,word of
// rows 4t+u and 16-word chunks, stored I32 [N/4, K/2]; wscales and wzeros
// model dtype [G', N], G' = K/64 rounded up to a multiple of 16 (zero rows).
//
// W4Linear layer (nunchaku's 4-bit T5 encoder, text_encoders/linear.py;
// qweight, scales, scaled_zeros, bias only where the module has one): the
// same 16-bit words and order t,chunk,u,word as W4A16 (tinychat_utils.py
// pack_w4), no interleave, stored I16 [N/4, K]; scales and scaled_zeros
// model dtype [G', N], G' = ceil_num_groups(K, 128) = K/128 rounded up to a
// multiple of 8 (zero rows); w = q·scales + scaled_zeros.
//
// Packing does no arithmetic on values beyond layout (and the W4A16 bias +1
// the format prescribes): every value of quant.Layer / quant.WeightOnly must
// already be exactly representable in the stored type, or Pack returns an
// error.
package nunchaku
