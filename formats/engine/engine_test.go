package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
)

// TestTableRows: every row names a known engine and family, cites sources,
// and each engine × family appears once; every family nunchaku runs has a
// row for the engines the loaders issue lists.
func TestTableRows(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Contracts() {
		if engineIndex(c.Engine) == len(Engines) || Families[c.Family] == nil {
			t.Errorf("%s: unknown engine or family", c.Key())
		}
		if len(c.Source) == 0 || c.Loader == "" || c.Naming == 0 || c.Rank == 0 || c.DType == 0 {
			t.Errorf("%s: incomplete row", c.Key())
		}
		if seen[c.Key()] {
			t.Errorf("%s: two rows", c.Key())
		}
		seen[c.Key()] = true
	}
	for _, k := range []string{"nunchaku-cpp/flux", "nunchaku-python/flux", "comfyui/flux", "nunchaku-cpp/sana",
		"nunchaku-python/qwen-image", "comfyui/qwen-image", "nunchaku-python/sdxl", "nunchaku-python/z-image",
		"nunchaku-python/t5", "comfyui/t5"} {
		if !seen[k] {
			t.Errorf("no row %s", k)
		}
	}
}

// fileOf builds a header from "name dtype d0,d1" lines.
func fileOf(md map[string]string, lines ...string) *File {
	f := &File{Tensors: map[string]TensorInfo{}, Metadata: md}
	for _, l := range lines {
		p := strings.Fields(l)
		var shape []int64
		for _, d := range strings.Split(p[2], ",") {
			var n int64
			for _, c := range d {
				n = n*10 + int64(c-'0')
			}
			shape = append(shape, n)
		}
		f.Tensors[p[0]] = TensorInfo{DType: p[1], Shape: shape}
	}
	return f
}

// w4a4 lists an INT4 layer's tensors under the given names (N, K logical =
// stored, rank r).
func w4a4Lines(layer string, n, k, r string, py, bias bool) []string {
	sm, so, d, u := "smooth", "smooth_orig", "lora_down", "lora_up"
	if py {
		sm, so, d, u = "smooth_factor", "smooth_factor_orig", "proj_down", "proj_up"
	}
	half := map[string]string{"128": "64", "256": "128", "384": "192"}[k]
	g := map[string]string{"128": "2", "256": "4", "384": "6"}[k]
	out := []string{
		layer + ".qweight I8 " + n + "," + half,
		layer + ".wscales BF16 " + g + "," + n,
		layer + "." + sm + " BF16 " + k,
		layer + "." + so + " BF16 " + k,
		layer + "." + d + " BF16 " + k + "," + r,
		layer + "." + u + " BF16 " + n + "," + r,
	}
	if bias {
		out = append(out, layer+".bias BF16 "+n)
	}
	return out
}

func qwenBlock(py bool, r string) []string {
	var l []string
	for _, s := range []string{"attn.to_qkv", "attn.add_qkv_proj", "attn.to_out.0", "attn.to_add_out", "img_mlp.net.0.proj",
		"img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"} {
		l = append(l, w4a4Lines("transformer_blocks.0."+s, "128", "128", r, py, true)...)
	}
	for _, s := range []string{"img_mod.1", "txt_mod.1"} {
		p := "transformer_blocks.0." + s
		l = append(l, p+".qweight I32 192,64", p+".wscales BF16 2,768", p+".wzeros BF16 2,768", p+".bias BF16 768")
	}
	return append(l, "transformer_blocks.0.attn.norm_q.weight BF16 128")
}

func has(problems []string, sub string) bool {
	for _, p := range problems {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}

var qwenPython = func() *Contract {
	for _, c := range Contracts() {
		if c.Key() == "nunchaku-python/qwen-image" {
			return c
		}
	}
	panic("no row")
}()

// TestCheckQwen: a Qwen-Image file in Python names with one rank passes
// the diffusers loader; each single defect is named.
func TestCheckQwen(t *testing.T) {
	md := map[string]string{"config": "{}", "quantization_config": `{"method": "svdquant", "rank": 32}`}
	if p := Check(qwenPython, fileOf(md, qwenBlock(true, "32")...)); len(p) != 0 {
		t.Fatalf("good file: %v", p)
	}
	cases := []struct {
		name  string
		lines []string
		md    map[string]string
		want  string
	}{
		{"C++ names", qwenBlock(false, "32"), md, "tensor names the loader does not read"},
		{"rank", qwenBlock(true, "48"), md, "rank differs from quantization_config rank 32"},
		{"no config", qwenBlock(true, "32"), map[string]string{"quantization_config": md["quantization_config"]}, "no config metadata"},
		{"missing layer", qwenBlock(true, "32")[6:], md, "missing quantized modules: transformer_blocks.0.attn.to_qkv"},
		{"W4A16 rows", append(qwenBlock(true, "32"), "transformer_blocks.0.img_mod.1.wscales BF16 16,768"), md, "W4A16 wscales/wzeros rows"},
		{"W4A16 branch", append(qwenBlock(true, "32"), "transformer_blocks.0.img_mod.1.lora_down BF16 16,128"), md, "lora_down/lora_up on a W4A16 layer"},
		{"mixed dtype", append(qwenBlock(true, "32"), "proj_out.weight F32 64,128"), md, "not in the file's dtype BF16"},
		{"F16 file", func() []string {
			var out []string
			for _, l := range qwenBlock(true, "32") {
				out = append(out, strings.Replace(l, " BF16 ", " F16 ", 1))
			}
			return out
		}(), md, "W4A16 modules are always BF16"},
		{"provenance tensors", append(qwenBlock(true, "32"), "svdq_lora.base.proj_out.weight BF16 64,128"), md, "svdq_lora.* tensors"},
		{"INT4 wtscale", append(qwenBlock(true, "32"), "transformer_blocks.0.attn.to_qkv.wtscale F32 1"), md, "wtscale/wcscales on an INT4 layer"},
		{"no bias", func() []string {
			var out []string
			for _, l := range qwenBlock(true, "32") {
				if !strings.HasPrefix(l, "transformer_blocks.0.attn.to_qkv.bias") {
					out = append(out, l)
				}
			}
			return out
		}(), md, "no bias tensor where the loader's module has one: transformer_blocks.0.attn.to_qkv"},
	}
	for _, c := range cases {
		p := Check(qwenPython, fileOf(c.md, c.lines...))
		if !has(p, c.want) {
			t.Errorf("%s: problems %q, want one containing %q", c.name, p, c.want)
		}
	}
}

// TestCheckSDXLBias: SDXL's loader builds attn1.to_qkv and attn2.to_q
// without a bias (unet_sdxl.py NunchakuSDXLAttention: the diffusers q/k/v
// have none), so a bias tensor there is an unexpected key.
func TestCheckSDXLBias(t *testing.T) {
	c := For("sdxl")[0]
	b := "down_blocks.1.attentions.0.transformer_blocks.0."
	var lines []string
	for _, s := range []struct {
		n    string
		bias bool
	}{{"attn1.to_qkv", false}, {"attn1.to_out.0", true}, {"attn2.to_q", false}, {"attn2.to_out.0", true},
		{"ff.net.0.proj", true}, {"ff.net.2", true}} {
		lines = append(lines, w4a4Lines(b+s.n, "128", "128", "32", false, s.bias)...)
	}
	md := map[string]string{"config": "{}"}
	if p := Check(c, fileOf(md, lines...)); len(p) != 0 {
		t.Fatalf("good file: %v", p)
	}
	p := Check(c, fileOf(md, append(lines, b+"attn1.to_qkv.bias BF16 128")...))
	if !has(p, "a bias tensor where the loader builds the module without one") {
		t.Fatalf("bias on attn1.to_qkv: %v", p)
	}
	// NVFP4: wtscale is an unexpected key, wcscales required.
	var nv []string
	for _, l := range lines {
		nv = append(nv, strings.Replace(l, "wscales BF16 2,", "wscales F8_E4M3 8,", 1))
	}
	p = Check(c, fileOf(md, append(nv, b+"ff.net.2.wtscale F32 1")...))
	if !has(p, "NVFP4 wtscale the loader does not accept") || !has(p, "no wcscales on an NVFP4 layer") {
		t.Fatalf("nvfp4: %v", p)
	}
}

// TestCheckFluxFixed: the C++ engine hard-codes 19 + 38 blocks of width
// 3072 (src/FluxModel.cpp FluxModel::FluxModel); V2 reads the config.
func TestCheckFluxFixed(t *testing.T) {
	var lines []string
	for _, s := range []string{"qkv_proj", "qkv_proj_context", "out_proj", "out_proj_context", "mlp_fc1", "mlp_fc2", "mlp_context_fc1", "mlp_context_fc2"} {
		lines = append(lines, w4a4Lines("transformer_blocks.0."+s, "128", "128", "32", false, true)...)
	}
	md := map[string]string{"config": "{}", "quantization_config": `{"rank": 32}`}
	var v1, v2 *Contract
	for _, c := range For("flux-dev") {
		switch c.Engine {
		case CPP:
			v1 = c
		case Python:
			v2 = c
		}
	}
	p := Check(v1, fileOf(md, lines...))
	if !has(p, "1 transformer_blocks, the engine hard-codes 19") || !has(p, "width 128, the engine hard-codes 3072") {
		t.Fatalf("v1: %v", p)
	}
	// Unequal fc1/fc2 ranks: C++ fuses the pair (fc1's epilogue feeds fc2).
	bad := append([]string(nil), lines...)
	bad = append(bad, "transformer_blocks.0.mlp_fc2.lora_down BF16 128,48", "transformer_blocks.0.mlp_fc2.lora_up BF16 128,48")
	if p := Check(v1, fileOf(md, bad...)); !has(p, "low-rank input): transformer_blocks.0.mlp_fc1") {
		t.Fatalf("pair ranks: %v", p)
	}
	if p := Check(v2, fileOf(md, bad...)); !has(p, "rank differs from quantization_config rank 32") {
		t.Fatalf("v2 rank: %v", p)
	}
}

// TestComfyFluxConfig: the comfy_config derived from FLUX.1-dev's and
// FLUX.1-Fill's diffusers configs equals ComfyUI-nunchaku's shipped
// nodes/models/configs/flux.1-dev.json and flux.1-fill-dev.json (values
// copied by hand from those files at dbfd194), and schnell's model_class.
func TestComfyFluxConfig(t *testing.T) {
	dev := `{"_class_name":"FluxTransformer2DModel","attention_head_dim":128,"axes_dims_rope":[16,56,56],"guidance_embeds":true,` +
		`"in_channels":64,"joint_attention_dim":4096,"num_attention_heads":24,"num_layers":19,"num_single_layers":38,` +
		`"out_channels":null,"patch_size":1,"pooled_projection_dim":768}`
	const shipped = `{"model_class":"Flux","model_config":{"axes_dim":[16,56,56],"context_in_dim":4096,"depth":19,` +
		`"depth_single_blocks":38,"disable_unet_model_creation":true,"guidance_embed":true,"hidden_size":3072,` +
		`"image_model":"flux","in_channels":16,"mlp_ratio":4.0,"num_heads":24,"out_channels":16,"patch_size":2,` +
		`"qkv_bias":true,"theta":10000,"vec_in_dim":768}}`
	same := func(a, b string) bool {
		var x, y any
		return json.Unmarshal([]byte(a), &x) == nil && json.Unmarshal([]byte(b), &y) == nil && jsonEqual(x, y)
	}
	got, err := ComfyFluxConfig(dev)
	if err != nil || !same(got, shipped) {
		t.Fatalf("dev: %s (%v)\nwant %s", got, err, shipped)
	}
	fill := strings.Replace(strings.Replace(dev, `"in_channels":64`, `"in_channels":384`, 1), `"out_channels":null`, `"out_channels":64`, 1)
	got, _ = ComfyFluxConfig(fill)
	if !same(got, strings.Replace(shipped, `"in_channels":16`, `"in_channels":96`, 1)) {
		t.Fatalf("fill: %s", got)
	}
	schnell := strings.Replace(dev, `"guidance_embeds":true`, `"guidance_embeds":false`, 1)
	got, _ = ComfyFluxConfig(schnell)
	want := strings.Replace(strings.Replace(shipped, `"Flux"`, `"FluxSchnell"`, 1), `"guidance_embed":true`, `"guidance_embed":false`, 1)
	if !same(got, want) {
		t.Fatalf("schnell: %s", got)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// TestAdapt: renames to the Python names, drops a zero bias the loader
// does not build (and refuses a non-zero one), trims W4A16 rows to K/64,
// and leaves the C++ names for FLUX.
func TestAdapt(t *testing.T) {
	zimage, err := LayoutFor(For("z-image"))
	if err != nil {
		t.Fatal(err)
	}
	ts := []nunchaku.Tensor{
		{Suffix: "qweight", DType: "I8", Shape: []int64{128, 64}, Data: make([]byte, 128*64)},
		{Suffix: "smooth", DType: "BF16", Shape: []int64{128}, Data: make([]byte, 256)},
		{Suffix: "lora_down", DType: "BF16", Shape: []int64{128, 32}, Data: make([]byte, 128*64)},
		{Suffix: "bias", DType: "BF16", Shape: []int64{128}, Data: make([]byte, 256)},
	}
	out, err := zimage.Adapt("z-image", "layers.0.attention.to_qkv", ts)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range out {
		got = append(got, x.Suffix)
	}
	if strings.Join(got, " ") != "qweight smooth_factor proj_down" {
		t.Fatalf("z-image tensors %v", got)
	}
	ts[3].Data = append([]byte{1}, ts[3].Data[1:]...)
	if _, err := zimage.Adapt("z-image", "layers.0.attention.to_qkv", ts); err == nil || !strings.Contains(err.Error(), "bias is not zero") {
		t.Fatalf("non-zero bias dropped: %v", err)
	}
	flux, err := LayoutFor(For("flux-dev"))
	if err != nil {
		t.Fatal(err)
	}
	w := []nunchaku.Tensor{
		{Suffix: "qweight", DType: "I32", Shape: []int64{32, 64}, Data: make([]byte, 32*64*4)},
		{Suffix: "wscales", DType: "BF16", Shape: []int64{16, 128}, Data: make([]byte, 16*128*2)},
		{Suffix: "wzeros", DType: "BF16", Shape: []int64{16, 128}, Data: make([]byte, 16*128*2)},
	}
	out, err = flux.Adapt("flux-dev", "transformer_blocks.0.norm1.linear", w)
	if err != nil {
		t.Fatal(err)
	}
	if out[1].Shape[0] != 2 || len(out[1].Data) != 2*128*2 {
		t.Fatalf("W4A16 rows not trimmed to K/64 = 2: %v", out[1].Shape)
	}
	if _, err := flux.Adapt("flux-dev", "transformer_blocks.0.attn.to_qkv", ts); err == nil {
		t.Fatal("a layer FLUX's loaders do not build was adapted")
	}
}

// TestAdaptSDXLNVFP4: SDXL's loader reads no wtscale and requires
// wcscales: a power-of-two tensor scale moves into uniform wcscales, any
// other is refused.
func TestAdaptSDXLNVFP4(t *testing.T) {
	l, err := LayoutFor(For("sdxl"))
	if err != nil {
		t.Fatal(err)
	}
	ts := func(wt []byte) []nunchaku.Tensor {
		return []nunchaku.Tensor{
			{Suffix: "qweight", DType: "I8", Shape: []int64{128, 64}, Data: make([]byte, 128*64)},
			{Suffix: "wscales", DType: "F8_E4M3", Shape: []int64{8, 128}, Data: make([]byte, 8*128)},
			{Suffix: "wtscale", DType: "F32", Shape: []int64{1}, Data: wt},
			{Suffix: "smooth", DType: "BF16", Shape: []int64{128}, Data: make([]byte, 256)},
			{Suffix: "bias", DType: "BF16", Shape: []int64{128}, Data: make([]byte, 256)},
		}
	}
	eighth := []byte{0, 0, 0, 0x3e} // F32 0.125
	out, err := l.Adapt("sdxl", "mid_block.attentions.0.transformer_blocks.0.ff.net.2", ts(eighth))
	if err != nil {
		t.Fatal(err)
	}
	var wc *nunchaku.Tensor
	for i := range out {
		switch out[i].Suffix {
		case "wtscale":
			t.Fatal("wtscale kept")
		case "wcscales":
			wc = &out[i]
		}
	}
	// BF16 0.125 = 0x3E00, little-endian 00 3E, for all 128 channels.
	if wc == nil || wc.DType != "BF16" || len(wc.Data) != 256 || wc.Data[0] != 0 || wc.Data[1] != 0x3e || wc.Data[254] != 0 || wc.Data[255] != 0x3e {
		t.Fatalf("wcscales %+v", wc)
	}
	if _, err := l.Adapt("sdxl", "mid_block.attentions.0.transformer_blocks.0.ff.net.2", ts([]byte{0, 0, 0x40, 0x3e})); err == nil {
		t.Fatal("a tensor scale of 0.1875 (not a power of two) was accepted")
	}
}

// t5Lines is a T5 encoder of width 256 (4 heads of 64), feed-forward 384,
// `blocks` blocks, every linear a W4Linear (N, K of 256/384: scale rows
// ceil_num_groups = 8), plus the 16-bit tensors the strict load needs.
func t5Lines(blocks int) []string {
	out := []string{"shared.weight BF16 32128,256", "encoder.embed_tokens.weight BF16 32128,256",
		"encoder.final_layer_norm.weight BF16 256",
		"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight BF16 32,4"}
	for b := range blocks {
		p := "encoder.block." + string(rune('0'+b)) + "."
		out = append(out, p+"layer.0.layer_norm.weight BF16 256", p+"layer.1.layer_norm.weight BF16 256")
		for _, l := range []struct{ name, n, k string }{
			{"layer.0.SelfAttention.q", "256", "256"}, {"layer.0.SelfAttention.k", "256", "256"},
			{"layer.0.SelfAttention.v", "256", "256"}, {"layer.0.SelfAttention.o", "256", "256"},
			{"layer.1.DenseReluDense.wi_0", "384", "256"}, {"layer.1.DenseReluDense.wi_1", "384", "256"},
			{"layer.1.DenseReluDense.wo", "256", "384"}} {
			q := map[string]string{"256": "64", "384": "96"}[l.n]
			out = append(out, p+l.name+".qweight I16 "+q+","+l.k, p+l.name+".scales BF16 8,"+l.n, p+l.name+".scaled_zeros BF16 8,"+l.n)
		}
	}
	return out
}

// TestCheckT5: a W4Linear file loads in nunchaku's T5 class and, with
// model_class, in ComfyUI's V2 loader; each rule of W4Linear and of the
// strict load is caught and named.
func TestCheckT5(t *testing.T) {
	md := func() map[string]string {
		return map[string]string{MetaConfig: `{"d_model":256}`, MetaModelClass: "NunchakuT5EncoderModel"}
	}
	py, comfy := For("t5-xxl")[0], For("t5-xxl")[1]
	if py.Key() != "nunchaku-python/t5" || comfy.Key() != "comfyui/t5" {
		t.Fatalf("contracts %s %s", py.Key(), comfy.Key())
	}
	good := fileOf(md(), t5Lines(2)...)
	for _, c := range []*Contract{py, comfy} {
		if pr := Check(c, good); len(pr) != 0 {
			t.Fatalf("%s: %q", c.Key(), pr)
		}
	}
	if g := Guess(good); g != "t5" {
		t.Errorf("Guess = %q", g)
	}
	const q = "encoder.block.1.layer.0.SelfAttention.q"
	for _, c := range []struct {
		name  string
		edit  func(f *File)
		py    string // problem for nunchaku-python ("" none)
		comfy string
	}{
		{"no config", func(f *File) { delete(f.Metadata, MetaConfig) }, "no config metadata", "no config metadata"},
		{"no model_class", func(f *File) { delete(f.Metadata, MetaModelClass) }, "", "no model_class metadata"},
		{"other model_class", func(f *File) { f.Metadata[MetaModelClass] = "T5EncoderModel" }, "", `metadata model_class is "T5EncoderModel"`},
		{"I32 qweight", func(f *File) { f.Tensors[q+".qweight"] = TensorInfo{DType: "I32", Shape: []int64{64, 128}} }, "qweight not I16", "qweight not I16"},
		{"scale rows K/128", func(f *File) {
			f.Tensors[q+".scales"] = TensorInfo{DType: "BF16", Shape: []int64{2, 256}}
		}, "not [ceil_num_groups(in, 128), out]", "not [ceil_num_groups(in, 128), out]"},
		{"mixed scale dtypes", func(f *File) { f.Tensors[q+".scaled_zeros"] = TensorInfo{DType: "F16", Shape: []int64{8, 256}} }, "not of one 16-bit dtype", "not of one 16-bit dtype"},
		{"in-features 192", func(f *File) { f.Tensors[q+".qweight"] = TensorInfo{DType: "I16", Shape: []int64{64, 192}} }, "not a multiple of 128", "not a multiple of 128"},
		{"bias", func(f *File) { f.Tensors[q+".bias"] = TensorInfo{DType: "BF16", Shape: []int64{256}} }, "a bias tensor where", "a bias tensor where"},
		{"branch", func(f *File) { f.Tensors[q+".lora_down"] = TensorInfo{DType: "BF16", Shape: []int64{256, 16}} }, "tensors W4Linear does not have", "tensors W4Linear does not have"},
		{"weight twin", func(f *File) { f.Tensors[q+".weight"] = TensorInfo{DType: "BF16", Shape: []int64{256, 256}} }, "W4Linear registers no weight", "W4Linear registers no weight"},
		{"no embed_tokens", func(f *File) { delete(f.Tensors, "encoder.embed_tokens.weight") }, "missing 16-bit tensors the strict load needs: encoder.embed_tokens.weight", "encoder.embed_tokens.weight"},
		{"no layer norm", func(f *File) { delete(f.Tensors, "encoder.block.1.layer.1.layer_norm.weight") }, "encoder.block.1.layer.1.layer_norm.weight", "layer_norm"},
		{"neither", func(f *File) {
			for _, s := range []string{"qweight", "scales", "scaled_zeros"} {
				delete(f.Tensors, q+"."+s)
			}
		}, "neither a qweight nor a 16-bit weight: " + q, "neither"},
		{"W4A16 layout", func(f *File) {
			for _, s := range []string{"scales", "scaled_zeros"} {
				delete(f.Tensors, q+"."+s)
			}
			f.Tensors[q+".qweight"] = TensorInfo{DType: "I32", Shape: []int64{64, 128}}
			f.Tensors[q+".wscales"] = TensorInfo{DType: "BF16", Shape: []int64{4, 256}}
			f.Tensors[q+".wzeros"] = TensorInfo{DType: "BF16", Shape: []int64{4, 256}}
		}, "layer kind differs", "layer kind differs"},
	} {
		f := fileOf(md(), t5Lines(2)...)
		c.edit(f)
		for _, x := range []struct {
			c    *Contract
			want string
		}{{py, c.py}, {comfy, c.comfy}} {
			pr := strings.Join(Check(x.c, f), "; ")
			if (x.want == "") != (pr == "") || !strings.Contains(pr, x.want) {
				t.Errorf("%s, %s: %q (want %q)", c.name, x.c.Key(), pr, x.want)
			}
		}
	}
	// A 16-bit linear where the file has no qweight is what the loader
	// keeps: partially quantized files load.
	f := fileOf(md(), t5Lines(2)...)
	for _, s := range []string{"qweight", "scales", "scaled_zeros"} {
		delete(f.Tensors, q+"."+s)
	}
	f.Tensors[q+".weight"] = TensorInfo{DType: "BF16", Shape: []int64{256, 256}}
	if pr := Check(py, f); len(pr) != 0 {
		t.Errorf("16-bit q: %q", pr)
	}
}

// TestAdaptT5: a W4Linear passes through unchanged (no renames, no row
// trimming), a zero bias is dropped for the bias-free module and a
// non-zero one refused, a branch refused.
func TestAdaptT5(t *testing.T) {
	l, err := LayoutFor(For("t5-xxl"))
	if err != nil {
		t.Fatal(err)
	}
	if l.Family != "t5" || !l.Strict || strings.Join(l.Engines, " ") != "nunchaku-python comfyui" {
		t.Fatalf("layout %+v", l)
	}
	ts := []nunchaku.Tensor{
		{Suffix: "qweight", DType: "I16", Shape: []int64{64, 256}, Data: make([]byte, 64*256*2)},
		{Suffix: "scales", DType: "BF16", Shape: []int64{8, 256}, Data: make([]byte, 8*256*2)},
		{Suffix: "scaled_zeros", DType: "BF16", Shape: []int64{8, 256}, Data: make([]byte, 8*256*2)},
		{Suffix: "bias", DType: "BF16", Shape: []int64{256}, Data: make([]byte, 512)},
	}
	const layer = "encoder.block.3.layer.1.DenseReluDense.wo"
	out, err := l.Adapt("t5-xxl", layer, ts)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range out {
		got = append(got, fmt.Sprintf("%s%v", x.Suffix, x.Shape))
	}
	if strings.Join(got, " ") != "qweight[64 256] scales[8 256] scaled_zeros[8 256]" {
		t.Fatalf("adapted %v", got)
	}
	ts[3].Data = append([]byte{0, 1}, ts[3].Data[2:]...)
	if _, err := l.Adapt("t5-xxl", layer, ts); err == nil || !strings.Contains(err.Error(), "bias is not zero") {
		t.Errorf("non-zero bias: %v", err)
	}
	br := append(ts[:3:3], nunchaku.Tensor{Suffix: "lora_down", DType: "BF16", Shape: []int64{256, 16}})
	if _, err := l.Adapt("t5-xxl", layer, br); err == nil || !strings.Contains(err.Error(), "low-rank branch") {
		t.Errorf("branch: %v", err)
	}
	if _, err := l.Adapt("t5-xxl", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias", ts[:3]); err == nil {
		t.Error("a module the loader does not quantize was adapted")
	}
}
