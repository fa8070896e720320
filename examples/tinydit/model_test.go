package tinydit

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/svdq/svdq/quant"
)

// TestForwardMatchesSpago checks the batched forward pass against the
// per-token spago reference on every sample of a small batch.
func TestForwardMatchesSpago(t *testing.T) {
	cfg := SmallConfig()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in := NewBatch(cfg, 3, 3)
	got := m.Forward(in, Run{})
	ref := newSpagoRef(m)
	per := cfg.ImageTokens() * cfg.InChannels
	for s := range in.N {
		want := ref.forward(in, s)
		var num, den float64
		for i, w := range want {
			d := float64(got[s*per+i]) - float64(w)
			num += d * d
			den += float64(w) * float64(w)
		}
		rel := math.Sqrt(num / den)
		t.Logf("sample %d: relative difference %.2e", s, rel)
		if !(rel < 1e-5) {
			t.Errorf("sample %d: batched forward differs from the spago reference by %.3g (tolerance 1e-5)", s, rel)
		}
	}
}

// TestDeterministic: the same configuration gives the same weights and
// checkpoint bytes, the same outputs on every run, and a sample's output
// does not depend on the batch it runs in.
func TestDeterministic(t *testing.T) {
	cfg := SmallConfig()
	m1, _ := New(cfg)
	m2, _ := New(cfg)
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	if err := m1.WriteCheckpoint(p1); err != nil {
		t.Fatal(err)
	}
	if err := m2.WriteCheckpoint(p2); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(p1)
	b2, _ := os.ReadFile(p2)
	if !bytes.Equal(b1, b2) {
		t.Fatal("two builds of the same configuration wrote different checkpoints")
	}
	other := cfg
	other.Seed++
	m3, _ := New(other)
	if slices.Equal(m1.Tensors()[0].Data, m3.Tensors()[0].Data) {
		t.Error("a different seed gave the same weights")
	}

	in := NewBatch(cfg, 5, 4)
	if !slices.Equal(in.Latent[:len(in.Latent)/2], NewBatch(cfg, 5, 2).Latent) {
		t.Error("NewBatch: the first samples depend on the batch size")
	}
	y1, y2 := m1.Forward(in, Run{}), m2.Forward(in, Run{})
	if !slices.Equal(y1, y2) {
		t.Fatal("two forward passes of the same batch differ")
	}
	per := len(y1) / in.N
	for s := range in.N {
		alone := m1.Forward(in.Slice(cfg, s, s+1), Run{})
		if d := relDiff(alone, y1[s*per:(s+1)*per]); d > 1e-6 {
			t.Errorf("sample %d: output alone differs from its output in the batch by %.2e (tolerance 1e-6)", s, d)
		}
	}
}

func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

// TestTensorsAreBF16: every parameter is a bf16 value, so the checkpoint
// holds the model exactly.
func TestTensorsAreBF16(t *testing.T) {
	m, _ := New(SmallConfig())
	for _, ts := range m.Tensors() {
		for i, v := range ts.Data {
			if quant.RoundBF16(v) != v {
				t.Fatalf("%s[%d] = %v is not a bf16 value", ts.Name, i, v)
			}
		}
	}
}

// TestOutlierStructure checks the properties the package doc promises on
// the default model: heavy-tailed weights, q/k/v and MLP inputs whose
// largest channel is 8–40× the median channel, GELU inputs of the second
// MLP linears that are ≥ −0.17 with a few large channels.
func TestOutlierStructure(t *testing.T) {
	cfg := DefaultConfig()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := weight(m.Linears["transformer_blocks.0.attn.to_q"].W)
	var m2, m4 float64
	for _, v := range w {
		m2 += float64(v) * float64(v)
		m4 += math.Pow(float64(v), 4)
	}
	n := float64(len(w))
	if kurt := (m4 / n) / math.Pow(m2/n, 2); kurt < 5 {
		t.Errorf("to_q weight kurtosis %.1f, want heavy tails (> 5; Gaussian 3)", kurt)
	}
	absmax := map[string][]float64{}
	minimum := map[string]float64{}
	m.Forward(NewBatch(cfg, 9, 8), Run{Hook: func(mod string, x []float32, rows, k int) {
		a := absmax[mod]
		if a == nil {
			a = make([]float64, k)
			absmax[mod] = a
			minimum[mod] = math.Inf(1)
		}
		for i, v := range x[:rows*k] {
			a[i%k] = max(a[i%k], math.Abs(float64(v)))
			minimum[mod] = min(minimum[mod], float64(v))
		}
	}})
	ratio := func(mod string) float64 {
		a := slices.Clone(absmax[mod])
		slices.Sort(a)
		return a[len(a)-1] / a[len(a)/2]
	}
	for _, mod := range []string{"transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_q_proj",
		"transformer_blocks.0.ff.net.0.proj", "single_transformer_blocks.0.attn.to_q"} {
		if r := ratio(mod); r < 8 || r > 40 {
			t.Errorf("%s: largest channel %.1f× the median, want 8–40", mod, r)
		}
	}
	for _, mod := range []string{"transformer_blocks.0.ff.net.2", "transformer_blocks.1.ff_context.net.2"} {
		if r := ratio(mod); r < 5 || r > 40 {
			t.Errorf("%s: largest channel %.1f× the median, want 5–40", mod, r)
		}
		if minimum[mod] < -0.1701 {
			t.Errorf("%s: GELU input has %v < −0.17", mod, minimum[mod])
		}
	}
}
