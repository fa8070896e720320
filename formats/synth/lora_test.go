package synth

import (
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/lora"
)

func TestGenerateLoRA(t *testing.T) {
	dir := t.TempDir()
	opt := Options{Arch: "flux-dev", Out: dir, Scale: 0.05, Blocks: 1, Naming: "bfl"}
	if err := GenerateLoRA(opt, 4); err != nil {
		t.Fatal(err)
	}
	f, err := lora.Open(filepath.Join(dir, LoRAFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]lora.Module{}
	for _, m := range f.Modules {
		keys[m.Key] = m
	}
	// Diffusers names whatever the checkpoint naming: one double block
	// (to_q/k/v, to_out.0, add_q/k/v_proj, to_add_out) and two single ones
	// (to_q/k/v each).
	for _, k := range []string{"transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_add_out",
		"transformer.single_transformer_blocks.1.attn.to_v"} {
		m, ok := keys[k]
		if !ok {
			t.Fatalf("no module %s in %v", k, f.Modules)
		}
		if m.Rank != 4 || m.Alpha != 4 || m.Style != lora.StylePEFT {
			t.Errorf("%s: rank %d alpha %v style %s", k, m.Rank, m.Alpha, m.Style)
		}
	}
	if len(f.Modules) != 8+2*3 || len(f.Unknown) != 0 {
		t.Errorf("%d modules, unknown %v", len(f.Modules), f.Unknown)
	}
	if err := GenerateLoRA(opt, 0); err == nil {
		t.Error("rank 0 accepted")
	}
}
