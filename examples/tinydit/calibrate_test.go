package tinydit

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nlpodyssey/spago/mat"
	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/preset"
)

// TestCalibrationStats: with a reservoir larger than the token count the
// collector keeps every row in order, so its statistics must equal a
// direct computation: the first layers' inputs are the batch itself, the
// block-0 q/k/v input is recomputed with the spago reference, and counts,
// absmax and the GELU bound follow from the rows.
func TestCalibrationStats(t *testing.T) {
	cfg := SmallConfig()
	m, _ := New(cfg)
	const n = 3
	c := calib.NewCollector(1, calib.MaxSamples)
	m.Calibrate(c, 4, n, 2)
	stats := c.Stats()
	in := NewBatch(cfg, 4, n)
	ti, tt := cfg.ImageTokens(), cfg.TextTokens

	direct := map[string][]float32{
		"x_embedder":       in.Latent,
		"context_embedder": in.Text,
		"time_text_embed.timestep_embedder.linear_1": timestepEmbedding(in.Timestep),
		"time_text_embed.text_embedder.linear_1":     in.Pooled,
	}
	// Block 0's image q/k/v input from the spago reference.
	ref := newSpagoRef(m)
	var nx []float32
	for s := range n {
		one := in.Slice(cfg, s, s+1)
		tfreq := vec(timestepEmbedding(one.Timestep))
		temb := ref.lin("time_text_embed.timestep_embedder.linear_2",
			[]mat.Tensor{siluT(ref.lin("time_text_embed.timestep_embedder.linear_1", []mat.Tensor{tfreq})[0])})[0]
		pooled := ref.lin("time_text_embed.text_embedder.linear_2",
			[]mat.Tensor{siluT(ref.lin("time_text_embed.text_embedder.linear_1", []mat.Tensor{vec(one.Pooled)})[0])})[0]
		cond := siluT(addT(temb, pooled))
		mi := chunks(ref.lin("transformer_blocks.0.norm1.linear", []mat.Tensor{cond})[0], 6)
		for _, x := range ref.modulate(ref.lin("x_embedder", rows(one.Latent, ti, cfg.InChannels)), mi[0], mi[1]) {
			nx = append(nx, x.Value().Data().F32()...)
		}
	}
	direct["transformer_blocks.0.attn.to_q"] = nx

	for name, want := range direct {
		st := stats[name]
		if st == nil {
			t.Fatalf("%s: not collected", name)
		}
		if st.S*st.K != len(want) || st.Count != int64(st.S) {
			t.Fatalf("%s: S=%d K=%d count %d, want %d values", name, st.S, st.K, st.Count, len(want))
		}
		if d := relDiff(st.Samples, want); d > 1e-5 {
			t.Errorf("%s: collected rows differ from the direct computation by %.2e", name, d)
		}
		for j := range st.K {
			var mx float32
			for i := range st.S {
				mx = max(mx, float32(math.Abs(float64(st.Samples[i*st.K+j]))))
			}
			if mx != st.AbsMax[j] {
				t.Fatalf("%s: absmax[%d] = %v, max of the rows %v", name, j, st.AbsMax[j], mx)
			}
		}
	}
	counts := map[string]int64{
		"transformer_blocks.0.attn.to_q":        n * int64(ti),
		"transformer_blocks.0.attn.add_k_proj":  n * int64(tt),
		"transformer_blocks.0.norm1.linear":     n,
		"single_transformer_blocks.0.proj_out":  n * int64(tt+ti),
		"single_transformer_blocks.0.proj_mlp":  n * int64(tt+ti),
		"transformer_blocks.0.ff_context.net.2": n * int64(tt),
		"proj_out":                              n * int64(ti),
	}
	for name, want := range counts {
		if st := stats[name]; st == nil || st.Count != want {
			t.Errorf("%s: %v, want count %d", name, st, want)
		}
	}
	// proj_out of a single block reads attention ‖ GELU(MLP): its last H
	// columns, like every second MLP linear's input, are ≥ −0.17.
	st := stats["single_transformer_blocks.0.proj_out"]
	if st.K != cfg.Dim+cfg.MLPDim {
		t.Fatalf("single proj_out input width %d, want %d", st.K, cfg.Dim+cfg.MLPDim)
	}
	if lo := slices.Min(st.Cols(cfg.Dim, st.K).Samples); lo < -0.1701 {
		t.Errorf("single proj_out MLP columns: minimum %v below GELU's −0.17", lo)
	}
	if lo := slices.Min(stats["transformer_blocks.0.ff.net.2"].Samples); lo < -0.1701 {
		t.Errorf("ff.net.2 input: minimum %v below GELU's −0.17", lo)
	}
}

func siluT(x mat.Tensor) mat.Tensor { return vec(silu(x.Value().Data().F32())) }
func addT(a, b mat.Tensor) mat.Tensor {
	x, y := a.Value().Data().F32(), b.Value().Data().F32()
	out := make([]float32, len(x))
	for i := range x {
		out[i] = x[i] + y[i]
	}
	return vec(out)
}

// TestPresetPlansModel: formats/preset's flux family plans the checkpoint
// as FLUX.1-schnell, every planned layer is a logical layer of the forward
// pass with the same shape, and every calibration key it asks for is
// collected by the calibration pass at the right width.
func TestPresetPlansModel(t *testing.T) {
	cfg := SmallConfig()
	cfg.Double, cfg.Single = 2, 1
	m, _ := New(cfg)
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := m.WriteCheckpoint(path); err != nil {
		t.Fatal(err)
	}
	plan, err := planOf(path)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Family != "flux-schnell" {
		t.Errorf("family %s, want flux-schnell", plan.Family)
	}
	c := calib.NewCollector(1, 16)
	m.Calibrate(c, 1, 2, 2)
	stats := c.Stats()
	roles := map[preset.Role]int{}
	for _, l := range plan.Layers {
		roles[l.Role]++
		d := m.Layer(l.Name)
		if d == nil {
			t.Errorf("plan layer %s is not a model layer", l.Name)
			continue
		}
		if d.N != l.N || d.K != l.K {
			t.Errorf("%s: model [%d %d], plan [%d %d]", l.Name, d.N, d.K, l.N, l.K)
		}
		st := stats[l.Calib[0]]
		if st == nil || st.K < l.CalibCols.Hi || l.CalibCols.Len() != l.K {
			t.Errorf("%s: calibration key %s (cols %v) not collected at width ≥ %d", l.Name, l.Calib[0], l.CalibCols, l.CalibCols.Hi)
		}
	}
	if roles[preset.W4A4] != 8*cfg.Double+4*cfg.Single || roles[preset.W4A16] != 2*cfg.Double+cfg.Single {
		t.Errorf("roles %v, want %d W4A4 and %d W4A16", roles, 8*cfg.Double+4*cfg.Single, 2*cfg.Double+cfg.Single)
	}
	// Every tensor is read exactly once: as a layer source or kept 16-bit
	// (16 outside the blocks: 6 embedder linears, norm_out, proj_out; the
	// RMSNorm weights).
	used := map[string]bool{}
	for _, l := range plan.Layers {
		for _, src := range l.Sources {
			used[src.Tensor], used[src.Bias] = true, true
		}
	}
	delete(used, "")
	for _, k := range plan.Kept {
		if used[k.Tensor] {
			t.Errorf("%s is both kept and quantized", k.Tensor)
		}
		used[k.Tensor] = true
	}
	if want := 16 + 4*cfg.Double + 2*cfg.Single; len(plan.Kept) != want {
		t.Errorf("%d kept tensors, want %d", len(plan.Kept), want)
	}
	for _, ts := range m.Tensors() {
		if !used[ts.Name] {
			t.Errorf("tensor %s is neither quantized nor kept", ts.Name)
		}
	}
}
