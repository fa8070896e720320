package lora

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
)

// skeletonPlan plans a family's skeleton at a scale.
func skeletonPlan(t testing.TB, family, naming string, scale float64, blocks int) *preset.Plan {
	t.Helper()
	specs, err := preset.Skeleton(family, preset.SkeletonOptions{Scale: scale, Blocks: blocks, Naming: naming})
	if err != nil {
		t.Fatal(err)
	}
	f, err := preset.Lookup(family)
	if err != nil {
		t.Fatal(err)
	}
	p, err := f.Plan(preset.SkeletonTable(specs), preset.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeCheckpoint returns the svdq metadata and tensor headers a quantized
// checkpoint of plan p would have (W4A4 rank r), without any data.
func fakeCheckpoint(p *preset.Plan, r int) (*nunchaku.Meta, []safetensors.Info) {
	meta := &nunchaku.Meta{Version: nunchaku.MetaVersion, Tool: "test", Family: p.Family, Precision: "int4", Rank: r}
	var infos []safetensors.Info
	add := func(name string, dt safetensors.DType, shape ...int64) {
		infos = append(infos, safetensors.Info{Name: name, DType: dt, Shape: shape})
	}
	for _, l := range p.Layers {
		lm := nunchaku.LayerMeta{Name: l.Name, N: l.N, K: l.K, Group: 64, Precision: "int4", DType: "BF16"}
		for _, s := range l.Sources {
			lm.Sources = append(lm.Sources, nunchaku.SourceMeta{Tensor: s.Tensor, Bias: s.Bias,
				Rows: nunchaku.Range{s.Rows.Lo, s.Rows.Hi}, SrcRows: nunchaku.Range{s.SrcRows.Lo, s.SrcRows.Hi},
				SrcCols: nunchaku.Range{s.Cols.Lo, s.Cols.Hi}})
		}
		add(l.Name+".qweight", "I8", 1)
		add(l.Name+".wscales", "BF16", 1)
		add(l.Name+".bias", "BF16", 1)
		if l.Role == preset.W4A16 {
			lm.Kind, lm.Chunks = nunchaku.KindW4A16, max(l.Chunks, 1)
			add(l.Name+".wzeros", "BF16", 1)
		} else {
			lm.Kind, lm.R, lm.Shifted = nunchaku.KindW4A4, min(r, l.N, l.K), l.Shifted
			lm.Smooth = &nunchaku.Smoothing{Alpha: 0.5, Beta: 0.5}
			add(l.Name+".smooth", "BF16", 1)
			add(l.Name+".smooth_orig", "BF16", 1)
			add(l.Name+".lora_down", "BF16", 1)
			add(l.Name+".lora_up", "BF16", 1)
		}
		meta.Layers = append(meta.Layers, lm)
	}
	for _, k := range p.Kept {
		add(k.Name, "BF16", k.Shape...)
	}
	return meta, infos
}

// fluxIndex indexes a fake FLUX.1-dev checkpoint (width 128, two double and
// four single blocks) in the given source naming.
func fluxIndex(t testing.TB, naming string) *Index {
	t.Helper()
	meta, infos := fakeCheckpoint(skeletonPlan(t, "flux-dev", naming, 0.04, 2), 16)
	if err := meta.Validate(); err != nil {
		t.Fatal(err)
	}
	ix, err := NewIndex(meta, infos)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// randFactors returns a module with random A, B (N(0,1)/√K scaled).
func randFactors(rng *rand.Rand, module string, r, n, k int, alpha float64) Factors {
	f := Factors{Module: module, Rank: r, N: n, K: k, A: make([]float32, r*k), B: make([]float32, n*r), Alpha: alpha}
	for i := range f.A {
		f.A[i] = float32(rng.NormFloat64() * 0.1)
	}
	for i := range f.B {
		f.B[i] = float32(rng.NormFloat64() * 0.05)
	}
	return f
}

// writeOpen writes mods in a style and opens the file.
func writeOpen(t testing.TB, name string, mods []Factors, opt WriteOptions) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := Write(path, mods, opt); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
