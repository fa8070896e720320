package nunchaku

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

// fluxMeta returns the entry of a small FLUX-like file: a fused qkv, the
// column split of a single block's proj_out, and an adaLN layer.
func fluxMeta() *Meta {
	sm := func(a, b Ratio) *Smoothing { return &Smoothing{a, b} }
	return &Meta{Version: 1, Tool: "svdq 0.1.0", Family: "flux.1-dev", Precision: "int4", Rank: 32,
		Layers: []LayerMeta{
			{Name: "transformer_blocks.10.qkv_proj", Kind: KindW4A4, N: 9216, K: 3072, R: 32, Group: 64,
				Precision: "int4", DType: "BF16", Smooth: sm(0.45, 0.55), Sources: []SourceMeta{
					{Tensor: "transformer_blocks.10.attn.to_q.weight", Bias: "transformer_blocks.10.attn.to_q.bias", Rows: Range{0, 3072}, SrcRows: Range{0, 3072}, SrcCols: Range{0, 3072}},
					{Tensor: "transformer_blocks.10.attn.to_k.weight", Bias: "transformer_blocks.10.attn.to_k.bias", Rows: Range{3072, 6144}, SrcRows: Range{0, 3072}, SrcCols: Range{0, 3072}},
					{Tensor: "transformer_blocks.10.attn.to_v.weight", Bias: "transformer_blocks.10.attn.to_v.bias", Rows: Range{6144, 9216}, SrcRows: Range{0, 3072}, SrcCols: Range{0, 3072}},
				}},
			{Name: "single_transformer_blocks.2.mlp_fc2", Kind: KindW4A4, N: 3072, K: 12288, R: 32, Group: 64,
				Precision: "int4", DType: "BF16", Smooth: sm(0.05, 0), Shifted: true, Sources: []SourceMeta{
					{Tensor: "single_transformer_blocks.2.proj_out.weight", Rows: Range{0, 3072}, SrcRows: Range{0, 3072}, SrcCols: Range{3072, 15360}},
				}},
			{Name: "transformer_blocks.2.norm1.linear", Kind: KindW4A16, N: 18432, K: 3072, Group: 64,
				Precision: "int4", DType: "BF16", Chunks: 6, Sources: []SourceMeta{
					{Tensor: "transformer_blocks.2.norm1.linear.weight", Bias: "transformer_blocks.2.norm1.linear.bias", Rows: Range{0, 18432}, SrcRows: Range{0, 18432}, SrcCols: Range{0, 3072}},
				}},
		}}
}

func TestMetaGolden(t *testing.T) {
	m := &Meta{Version: 1, Tool: "svdq 0.1.0", Family: "toy", Precision: "nvfp4", Rank: 20, Layers: []LayerMeta{
		{Name: "b.1.fc<x>", Kind: KindW4A4, N: 10, K: 20, R: 20, Group: 16, Precision: "nvfp4", DType: "F16",
			Smooth: &Smoothing{0.5, 1}, Sources: []SourceMeta{{Tensor: "b.1.fc.weight", Rows: Range{0, 10}, SrcRows: Range{5, 15}, SrcCols: Range{0, 20}}}},
		{Name: "b.1.ada", Kind: KindW4A16, N: 6, K: 64, Group: 64, Precision: "int4", DType: "BF16", Chunks: 3,
			Sources: []SourceMeta{{Tensor: "b.1.ada.weight", Bias: "b.1.ada.bias", Rows: Range{0, 6}, SrcRows: Range{0, 6}, SrcCols: Range{0, 64}}}},
	}}
	got, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":1,"tool":"svdq 0.1.0","family":"toy","precision":"nvfp4","rank":20,"layers":[` +
		`{"name":"b.1.ada","kind":"w4a16","n":6,"k":64,"r":0,"group":64,"precision":"int4","dtype":"BF16","shifted":false,"chunks":3,` +
		`"sources":[{"tensor":"b.1.ada.weight","bias":"b.1.ada.bias","rows":[0,6],"src_rows":[0,6],"src_cols":[0,64]}]},` +
		`{"name":"b.1.fc<x>","kind":"w4a4","n":10,"k":20,"r":20,"group":16,"precision":"nvfp4","dtype":"F16","smooth":{"alpha":0.50,"beta":1.00},"shifted":false,` +
		`"sources":[{"tensor":"b.1.fc.weight","rows":[0,10],"src_rows":[5,15],"src_cols":[0,20]}]}]}`
	if got != want {
		t.Fatalf("Marshal:\n%s\nwant\n%s", got, want)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := fluxMeta()
	s, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseMeta(s)
	if err != nil {
		t.Fatal(err)
	}
	// Marshal sorts layers naturally: single…2, transformer_blocks.2, .10.
	names := []string{p.Layers[0].Name, p.Layers[1].Name, p.Layers[2].Name}
	if want := []string{"single_transformer_blocks.2.mlp_fc2", "transformer_blocks.2.norm1.linear", "transformer_blocks.10.qkv_proj"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("layer order %v, want %v", names, want)
	}
	for _, l := range m.Layers {
		got, ok := p.Layer(l.Name)
		if !ok || !reflect.DeepEqual(*got, l) {
			t.Fatalf("layer %s changed in the round trip:\n%+v\n%+v", l.Name, got, l)
		}
	}
	s2, err := p.Marshal()
	if err != nil || s2 != s {
		t.Fatalf("Marshal(Parse(s)) differs from s (err %v)", err)
	}
	if m.Layers[0].Name != "transformer_blocks.10.qkv_proj" {
		t.Fatal("Marshal reordered the caller's layers")
	}
}

// TestMetaLengthIndependentOfSmoothing: the writer sizes the header with
// placeholder exponents; any exponents on the grid give the same length.
func TestMetaLengthIndependentOfSmoothing(t *testing.T) {
	m := fluxMeta()
	for i := range m.Layers {
		if m.Layers[i].Smooth != nil {
			m.Layers[i].Smooth = &Smoothing{}
		}
	}
	base, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(31, 32))
	for trial := 0; trial < 50; trial++ {
		for i := range m.Layers {
			if m.Layers[i].Smooth != nil {
				a := Ratio(float64(rng.IntN(21)) * 0.05)
				b := Ratio(float64(rng.IntN(101)) / 100)
				m.Layers[i].Smooth = &Smoothing{a, b}
			}
		}
		s, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != len(base) {
			t.Fatalf("length %d with %s, %d with zeros", len(s), s, len(base))
		}
	}
}

func TestParseMetaStrict(t *testing.T) {
	good, err := fluxMeta().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, in, want string
	}{
		{"not json", "{", "svdq metadata"},
		{"no version", `{"tool":"x"}`, "no version"},
		{"version 2", strings.Replace(good, `"version":1`, `"version":2`, 1), "version 2"},
		{"unknown field", strings.Replace(good, `"family"`, `"colour":"red","family"`, 1), "unknown field"},
		{"trailing", good + " {}", "after top-level value"},
		{"bad precision", strings.Replace(good, `"precision":"int4","rank"`, `"precision":"int3","rank"`, 1), "int3"},
		{"bad kind", strings.Replace(good, `"kind":"w4a16"`, `"kind":"w8a8"`, 1), "w8a8"},
		{"alpha off grid", strings.Replace(good, `"alpha":0.45`, `"alpha":0.333`, 1), "0.333"},
		{"beta above 1", strings.Replace(good, `"beta":0.55`, `"beta":1.5`, 1), "1.5"},
		{"range of 3", strings.Replace(good, `"rows":[0,3072]`, `"rows":[0,3072,1]`, 1), "two elements"},
		{"rows overlap", strings.Replace(good, `"rows":[3072,6144],"src_rows":[0,3072]`, `"rows":[3071,6143],"src_rows":[0,3072]`, 1), "disjoint"},
		{"rows past n", strings.Replace(good, `"name":"single_transformer_blocks.2.mlp_fc2","kind":"w4a4","n":3072`, `"name":"single_transformer_blocks.2.mlp_fc2","kind":"w4a4","n":3000`, 1), "reach row 3072"},
		{"src rows", strings.Replace(good, `"rows":[3072,6144],"src_rows":[0,3072]`, `"rows":[3072,6144],"src_rows":[0,3071]`, 1), "do not match rows"},
		{"src cols width", strings.Replace(good, `"src_cols":[3072,15360]`, `"src_cols":[3072,15000]`, 1), "wide"},
		{"group", strings.Replace(good, `"k":12288,"r":32,"group":64`, `"k":12288,"r":32,"group":16`, 1), "group 16"},
		{"chunks on w4a4", strings.Replace(good, `"shifted":true`, `"shifted":true,"chunks":2`, 1), "chunks 2"},
		{"no smoothing", strings.Replace(good, `"smooth":{"alpha":0.05,"beta":0.00},`, ``, 1), "without smoothing"},
		{"chunks split", strings.Replace(good, `"chunks":6`, `"chunks":7`, 1), "7 chunks"},
		{"dtype", strings.Replace(good, `"dtype":"BF16"`, `"dtype":"F32"`, 1), "F32"},
		{"duplicate layer", strings.Replace(good, `"name":"transformer_blocks.2.norm1.linear"`, `"name":"transformer_blocks.10.qkv_proj"`, 1), "twice"},
	}
	for _, c := range cases {
		if c.in == good {
			t.Fatalf("%s: the edit did not apply", c.name)
		}
		_, err := ParseMeta(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestMarshalRejectsOffGridRatio(t *testing.T) {
	m := fluxMeta()
	m.Layers[0].Smooth = &Smoothing{Alpha: 1.0 / 3}
	if _, err := m.Marshal(); err == nil {
		t.Fatal("Marshal accepted alpha 1/3")
	}
	m.Layers[0].Smooth = &Smoothing{Alpha: 7 * 0.05, Beta: 1 - 7*0.05} // float noise from the grid
	s, err := m.Marshal()
	if err != nil || !strings.Contains(s, `"alpha":0.35,"beta":0.65`) {
		t.Fatalf("grid values: %v %s", err, s)
	}
}

func TestLayerMetaOptions(t *testing.T) {
	rng := rand.New(rand.NewPCG(33, 34))
	l := randomLayer(rng, 200, 300, 21, quant.INT4, quant.BF16)
	l.Unsigned = true
	src := []SourceMeta{{Tensor: "a.weight", Rows: Range{0, 200}, SrcRows: Range{0, 200}, SrcCols: Range{0, 300}}}
	lm := W4A4Meta("blk.fc2", l, Smoothing{0.3, 0.7}, src)
	m := &Meta{Version: MetaVersion, Tool: "t", Family: "f", Precision: "int4", Rank: 21, Layers: []LayerMeta{lm}}
	s, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseMeta(s)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := PackW4A4(l)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnpackW4A4(MapGetter(ts), p.Layers[0].W4A4Options("x.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	requireSameLayer(t, l, got)

	w := randomWeightOnly(rng, 24, 128, quant.F16)
	wm := W4A16Meta("blk.norm", w, 6, []SourceMeta{{Tensor: "n.weight", Rows: Range{0, 24}, SrcRows: Range{0, 24}, SrcCols: Range{0, 128}}})
	if err := (&Meta{Version: 1, Precision: "int4", Layers: []LayerMeta{wm}}).Validate(); err != nil {
		t.Fatal(err)
	}
	wt, _ := PackW4A16(w, 6)
	if _, err := UnpackW4A16(MapGetter(wt), wm.W4A16Options("x")); err != nil {
		t.Fatal(err)
	}
	_, err = UnpackW4A4(MapGetter(ts), W4A4Options{Name: "x.safetensors: blk.fc2", N: 100})
	if err == nil || !strings.Contains(err.Error(), "x.safetensors: blk.fc2") {
		t.Fatalf("error does not name file and layer: %v", err)
	}
}

func TestNaturalLess(t *testing.T) {
	in := []string{"b.10", "b.2", "a", "b.02", "b.2.x", "b", "single.1", "b.1"}
	want := []string{"a", "b", "b.1", "b.2", "b.2.x", "b.02", "b.10", "single.1"}
	got := append([]string(nil), in...)
	for i := range got { // insertion sort with the comparison under test
		for j := i; j > 0 && naturalLess(got[j], got[j-1]); j-- {
			got[j], got[j-1] = got[j-1], got[j]
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("natural order %v, want %v", got, want)
	}
}

// FuzzParseMeta: whatever ParseMeta accepts marshals and parses back to the
// same entry. The seeds are small (one layer of fluxMeta, 407 bytes, not
// all three) and inputs over 1 KiB are skipped before any work: the
// fuzzer minimizes each new input in time quadratic in its length, and
// fuzzes nothing meanwhile, so a large seed stalls it for seconds at a time.
func FuzzParseMeta(f *testing.F) {
	m := fluxMeta()
	m.Layers = m.Layers[1:2] // single_transformer_blocks.2.mlp_fc2: shifted, smoothing, column slice
	s, err := m.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s)
	f.Add(`{"version":1,"tool":"","family":"","precision":"nvfp4","rank":0,"layers":[]}`)
	f.Add(`{"version":1}`)
	f.Fuzz(func(t *testing.T, in string) {
		if len(in) > 1<<10 {
			return
		}
		m, err := ParseMeta(in)
		if err != nil {
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted %q but cannot marshal it: %v", in, err)
		}
		m2, err := ParseMeta(out)
		if err != nil {
			t.Fatalf("cannot parse own output %q: %v", out, err)
		}
		out2, err := m2.Marshal()
		if err != nil || out2 != out {
			t.Fatalf("marshal not stable: %q vs %q", out, out2)
		}
	})
}

// TestParseMetaPaddedParts: a fused layer whose parts are each padded (SANA's
// q|k|v at D = 2240, each part in a 2304-row slot) has rows no source
// covers; they are zero padding, and the metadata is valid.
func TestParseMetaPaddedParts(t *testing.T) {
	m := fluxMeta()
	found := false
	for i := range m.Layers {
		if l := &m.Layers[i]; l.Name == "transformer_blocks.10.qkv_proj" {
			l.N = 3 * 3200
			for j := range l.Sources {
				l.Sources[j].Rows = Range{j * 3200, j*3200 + 3072}
			}
			found = true
		}
	}
	if !found {
		t.Fatal("fluxMeta has no transformer_blocks.10.qkv_proj")
	}
	s, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseMeta(s); err != nil {
		t.Fatalf("padded parts rejected: %v", err)
	}
}
