package tinydit

import (
	"testing"

	"github.com/svdq/svdq/calib"
)

// TestDumpCalibFixture reads the file examples/dump_calib.py --self-test
// wrote on the GPU machine (torch 2.11.0+cu130, H100; `--samples 4 --steps
// 4`: 3 prompts × 4 steps = 12 forward passes of its FLUX-like torch.nn
// model) with calib.Open: every layer must validate, with the counts the
// script's model implies.
func TestDumpCalibFixture(t *testing.T) {
	f, err := calib.Open("../testdata/dump_calib_selftest.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := len(f.Names()); n != 28 {
		t.Errorf("%d layers, want the 28 linears and 1×1 convolutions of the self-test model", n)
	}
	const calls, grid, tokens = 12, 16, 6 // forward passes, image tokens (4×4), text tokens
	want := map[string]struct {
		k     int
		count int64
	}{
		"x_embedder":                           {64, calls * grid}, // a 1×1 Conv2d: one row per pixel
		"context_embedder":                     {48, calls * tokens},
		"transformer_blocks.0.attn.to_q":       {32, calls * grid},
		"transformer_blocks.0.attn.add_q_proj": {32, calls * tokens},
		"transformer_blocks.0.ff.net.2":        {128, calls * grid},
		"transformer_blocks.0.norm1.linear":    {32, calls},
		"single_transformer_blocks.0.proj_out": {160, calls * (grid + tokens)},
		"proj_out":                             {32, calls * grid},
	}
	for _, name := range f.Names() {
		st, err := f.Layer(name)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if st.S != min(4, int(st.Count)) {
			t.Errorf("%s: %d samples of %d rows, want min(4, rows)", name, st.S, st.Count)
		}
		if w, ok := want[name]; ok && (st.K != w.k || st.Count != w.count) {
			t.Errorf("%s: K %d, count %d; want %d, %d", name, st.K, st.Count, w.k, w.count)
		}
	}
	for name := range want {
		if !f.Has(name) {
			t.Errorf("no layer %s", name)
		}
	}
}
