package nunchaku

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

// The strings nunchaku/merge_safetensors.py writes (json.dumps of its dict,
// default separators), for rank 32.
const (
	nunchakuINT4Config  = `{"method": "svdquant", "weight": {"dtype": "int4", "scale_dtype": null, "group_size": 64}, "activation": {"dtype": "int4", "scale_dtype": null, "group_size": 64}, "rank": 32}`
	nunchakuNVFP4Config = `{"method": "svdquant", "weight": {"dtype": "fp4_e2m1_all", "scale_dtype": [null, "fp8_e4m3_nan"], "group_size": 16}, "activation": {"dtype": "fp4_e2m1_all", "scale_dtype": "fp8_e4m3_nan", "group_size": 16}, "rank": 32}`
)

func TestQuantizationConfig(t *testing.T) {
	if got := QuantizationConfig(quant.INT4, 32); got != nunchakuINT4Config {
		t.Errorf("INT4:\n%s\nwant\n%s", got, nunchakuINT4Config)
	}
	if got := QuantizationConfig(quant.NVFP4, 32); got != nunchakuNVFP4Config {
		t.Errorf("NVFP4:\n%s\nwant\n%s", got, nunchakuNVFP4Config)
	}
	if got := QuantizationConfig(quant.INT4, 20); !strings.HasSuffix(got, `"rank": 32}`) {
		t.Errorf("rank 20 not padded to the stored 32: %s", got)
	}
	for _, p := range precisions {
		s := QuantizationConfig(p, 48)
		if !json.Valid([]byte(s)) {
			t.Fatalf("%v: invalid JSON %s", p, s)
		}
		gp, r, err := ParseQuantizationConfig(s)
		if err != nil || gp != p || r != 48 {
			t.Errorf("%v: parse back %v %d %v", p, gp, r, err)
		}
	}
}

func TestParseQuantizationConfig(t *testing.T) {
	// The compact spelling of the workspace spec and extra keys parse too.
	p, r, err := ParseQuantizationConfig(`{"method":"svdquant","weight":{"dtype":"fp4_e2m1_all","scale_dtype":[null,"fp8_e4m3_nan"],"group_size":16},"activation":{"dtype":"fp4_e2m1_all"},"rank":128,"skip_refiners":false}`)
	if err != nil || p != quant.NVFP4 || r != 128 {
		t.Fatalf("compact NVFP4: %v %d %v", p, r, err)
	}
	for _, c := range []struct{ in, want string }{
		{`{`, "quantization_config"},
		{`{"method": "awq", "weight": {"dtype": "int4"}}`, "method"},
		{`{"method": "svdquant", "weight": {"dtype": "int8"}}`, "int8"},
		{`{"method": "svdquant", "weight": {"dtype": "int4", "group_size": 128}}`, "group size 128"},
		{`{"method": "svdquant", "weight": {"dtype": "int4"}, "rank": -1}`, "negative rank"},
	} {
		if _, _, err := ParseQuantizationConfig(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.in, err, c.want)
		}
	}
}

func TestDescribe(t *testing.T) {
	l := randomLayer(newRand(41), 200, 300, 21, quant.NVFP4, quant.F16)
	w := randomWeightOnly(newRand(42), 24, 128, quant.BF16)
	a, _ := PackW4A4(l)
	b, _ := PackW4A16(w, 6)
	var infos []TensorInfo
	add := func(prefix string, ts []Tensor) {
		for _, x := range ts {
			infos = append(infos, TensorInfo{Name: prefix + "." + x.Suffix, DType: x.DType, Shape: x.Shape})
		}
	}
	add("transformer_blocks.10.qkv_proj", a)
	add("transformer_blocks.2.norm1.linear", b)
	// Python names, a plain 16-bit linear and a norm are not confused.
	for _, x := range a {
		if al, ok := aliases[x.Suffix]; ok {
			x.Suffix = al
		}
		infos = append(infos, TensorInfo{Name: "single_transformer_blocks.0.attn.to_qkv." + x.Suffix, DType: x.DType, Shape: x.Shape})
	}
	infos = append(infos,
		TensorInfo{"x_embedder.weight", "BF16", []int64{3072, 64}},
		TensorInfo{"x_embedder.bias", "BF16", []int64{3072}},
		TensorInfo{"transformer_blocks.2.norm_q.weight", "BF16", []int64{128}})

	got := Describe(infos)
	if len(got) != 3 {
		t.Fatalf("%d layers: %+v", len(got), got)
	}
	want := []struct {
		name, kind, prec, dtype string
		n, k, r, nt             int
	}{
		{"single_transformer_blocks.0.attn.to_qkv", KindW4A4, "nvfp4", "F16", 256, 384, 32, 8},
		{"transformer_blocks.2.norm1.linear", KindW4A16, "int4", "BF16", 24, 128, 0, 4},
		{"transformer_blocks.10.qkv_proj", KindW4A4, "nvfp4", "F16", 256, 384, 32, 8},
	}
	for i, w := range want {
		g := got[i]
		if g.Name != w.name || g.Kind != w.kind || g.Precision != w.prec || g.DType != w.dtype ||
			g.N != w.n || g.K != w.k || g.R != w.r || len(g.Suffixes) != w.nt {
			t.Errorf("layer %d: %+v, want %+v", i, g, w)
		}
	}
	var bytesA int64
	for _, x := range a {
		bytesA += int64(len(x.Data))
	}
	if got[2].Bytes != bytesA {
		t.Errorf("bytes %d, want %d", got[2].Bytes, bytesA)
	}
	names := make([]string, len(infos))
	for i, x := range infos {
		names[i] = x.Name
	}
	if gs := Layers(names); len(gs) != 3 || gs[1].Name != "transformer_blocks.2.norm1.linear" {
		t.Errorf("Layers: %+v", gs)
	}
}
