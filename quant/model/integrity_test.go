package model

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/kernels"
)

// flipByte copies the safetensors file src to dst with byte off of tensor
// name inverted (off < 0: the middle byte).
func flipByte(t *testing.T, src, dst, name string, off int64) {
	t.Helper()
	f, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	info, ok := f.Info(name)
	hdr := f.HeaderSize()
	f.Close()
	if !ok {
		t.Fatalf("%s: no tensor %s", src, name)
	}
	if off < 0 {
		off = (info.End - info.Begin) / 2
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	data[8+hdr+info.Begin+off] ^= 0xFF
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrityRecorded: quantize records, per layer, the hash of exactly
// the tensors it wrote (= the hash of the layer packed again from the file),
// and the file verifies.
func TestIntegrityRecorded(t *testing.T) {
	for _, which := range []string{"flux", "flux-nvfp4"} {
		b := loraCheckpoint(t, which)
		f, err := openQuantized(b.q)
		if err != nil {
			t.Fatal(err)
		}
		for i := range f.meta.Layers {
			lm := &f.meta.Layers[i]
			var ts []nunchaku.Tensor
			if lm.Kind == nunchaku.KindW4A16 {
				w, err := f.unpackW4A16(lm)
				if err != nil {
					t.Fatal(err)
				}
				ts, err = nunchaku.PackW4A16(w, lm.Chunks)
				if err != nil {
					t.Fatal(err)
				}
			} else {
				l, err := f.unpackW4A4(lm)
				if err != nil {
					t.Fatal(err)
				}
				if ts, err = nunchaku.PackW4A4(l); err != nil {
					t.Fatal(err)
				}
			}
			if want := nunchaku.HashTensors(ts); lm.SHA256 != want || lm.SHA256 == nunchaku.PlaceholderHash {
				t.Errorf("%s %s: recorded sha256 %q, packed tensors hash to %s", which, lm.Name, lm.SHA256, want)
			}
		}
		f.Close()
		res, err := VerifyIntegrity(b.q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 20 {
			t.Fatalf("%s: %d layers verified", which, len(res))
		}
		for _, r := range res {
			if r.Status != IntegrityOK || r.Actual != r.Recorded {
				t.Errorf("%s: %+v", which, r)
			}
		}
	}
}

// TestIntegrityFlippedByte: one byte flipped in any packed tensor of a
// layer makes check fail without measuring (naming the layer), gpu-check
// fail before it opens a GPU, and fuse-lora and unpack refuse the file.
func TestIntegrityFlippedByte(t *testing.T) {
	b := loraCheckpoint(t, "flux")
	dir := t.TempDir()
	lp := writeLoRA(t, dir, "l.safetensors", fluxModules(rand.New(rand.NewPCG(3, 3)), 2), lora.WriteOptions{Style: lora.StylePEFT})
	for i, c := range []struct{ layer, suffix string }{
		{"transformer_blocks.0.qkv_proj", nunchaku.SuffixQWeight},
		{"transformer_blocks.0.qkv_proj", nunchaku.SuffixWScales},
		{"single_transformer_blocks.0.mlp_fc2", nunchaku.SuffixLoraUp},
		{"transformer_blocks.0.mlp_fc2", nunchaku.SuffixSmooth},
		{"single_transformer_blocks.1.out_proj", nunchaku.SuffixBias},
		{"transformer_blocks.0.norm1.linear", nunchaku.SuffixWZeros}, // W4A16
	} {
		bad := filepath.Join(dir, "bad"+string(rune('a'+i))+".safetensors")
		flipByte(t, b.q, bad, c.layer+"."+c.suffix, int64(7*i))
		what := c.layer + "." + c.suffix

		rep, _, err := Check(CheckOptions{Model: bad, Reference: b.src, Calib: b.calib, Workers: 2})
		if err != nil {
			t.Fatalf("%s: check: %v", what, err)
		}
		if rep.Passed || len(rep.Mismatches) != 1 || rep.Mismatches[0].Name != c.layer ||
			!strings.Contains(rep.Mismatches[0].Problem(), "packed bytes differ from those recorded at quantize time: sha256 ") {
			t.Fatalf("%s: check passed %v, mismatches %+v", what, rep.Passed, rep.Mismatches)
		}
		for _, l := range rep.Layers {
			want := IntegrityOK
			if l.Name == c.layer {
				want = IntegrityMismatch
			}
			if l.Integrity != want || len(l.RelError) != 0 {
				t.Errorf("%s: check layer %s: integrity %q, %d errors measured", what, l.Name, l.Integrity, len(l.RelError))
			}
		}

		if !strings.HasSuffix(c.layer, "norm1.linear") { // gpu-check runs W4A4 layers only
			g, err := GPUCheck(GPUCheckOptions{Model: bad, Reference: b.src, Calib: b.calib, Rows: 16,
				OnStart: func(GPUCheckStart) { t.Errorf("%s: gpu-check opened the GPU", what) }})
			if err != nil {
				t.Fatalf("%s: gpu-check: %v", what, err)
			}
			if g.Passed || g.Device != "" || len(g.Mismatches) != 1 || g.Mismatches[0].Name != c.layer || len(g.Layers) != 16 {
				t.Fatalf("%s: gpu-check passed %v on %q, %d layers, mismatches %+v", what, g.Passed, g.Device, len(g.Layers), g.Mismatches)
			}
		}

		_, err = FuseLoRA(FuseOptions{Model: bad, Out: filepath.Join(dir, "fused.safetensors"), LoRAs: []LoRASpec{{Path: lp, Strength: 1}}})
		if err == nil || !strings.Contains(err.Error(), "layer "+c.layer+": packed bytes differ") {
			t.Errorf("%s: fuse-lora of a corrupted file: %v", what, err)
		}
		_, err = Unpack(UnpackOptions{Model: bad, Out: filepath.Join(dir, "u")})
		if err == nil || !strings.Contains(err.Error(), "layer "+c.layer+": packed bytes differ") {
			t.Errorf("%s: unpack of a corrupted file: %v", what, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "fused.safetensors")); err == nil {
		t.Error("fuse-lora wrote a file from a corrupted input")
	}
}

// TestIntegrityIntact: an unflipped file checks with every layer "ok";
// gpu-check gets past the hashes to the GPU; a file without svdq metadata
// reports "absent" and still checks.
func TestIntegrityIntact(t *testing.T) {
	b := loraCheckpoint(t, "flux")
	rep, _, err := Check(CheckOptions{Model: b.q, Reference: b.src, Calib: b.calib, Workers: 2, Layers: mustRegexp(`^transformer_blocks\.0\.(qkv_proj|norm1\.linear)$`)})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || len(rep.Mismatches) != 0 || len(rep.Layers) != 2 {
		t.Fatalf("intact file: passed %v, %d layers, mismatches %+v", rep.Passed, len(rep.Layers), rep.Mismatches)
	}
	for _, l := range rep.Layers {
		if l.Integrity != IntegrityOK || len(l.RelError) == 0 {
			t.Errorf("%s: integrity %q, errors %v", l.Name, l.Integrity, l.RelError)
		}
	}

	_, err = GPUCheck(GPUCheckOptions{Model: b.q, Reference: b.src, Calib: b.calib, Rows: 16, Layers: mustRegexp(`qkv_proj$`)})
	if d, derr := kernels.Open(0); derr == nil {
		d.Close()
		if err != nil {
			t.Errorf("gpu-check with a GPU: %v", err)
		}
	} else if !errors.Is(err, kernels.ErrNoDriver) && !strings.Contains(err.Error(), derr.Error()) {
		t.Errorf("gpu-check without a usable GPU: %v, want the error of kernels.Open (%v)", err, derr)
	}

	bare := filepath.Join(t.TempDir(), "bare.safetensors")
	stripMeta(t, b.q, bare)
	rep, _, err = Check(CheckOptions{Model: bare, Reference: b.src, Calib: b.calib, Workers: 2, Layers: mustRegexp(`^transformer_blocks\.0\.qkv_proj$`)})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || len(rep.Layers) != 1 || rep.Layers[0].Integrity != IntegrityAbsent {
		t.Fatalf("file without metadata: passed %v, layers %+v", rep.Passed, rep.Layers)
	}
	res, err := VerifyIntegrity(bare, nil)
	if err != nil || len(res) != 20 || res[0].Status != IntegrityAbsent {
		t.Fatalf("VerifyIntegrity without metadata: %v %+v", err, res)
	}
}

// TestIntegrityFuse: fuse-lora writes the hashes of the layers it rewrites
// (the fused file verifies, touched layers change hash, the others keep
// theirs), and removing the LoRA gives back the base's hashes.
func TestIntegrityFuse(t *testing.T) {
	b := loraCheckpoint(t, "flux")
	dir := t.TempDir()
	lp := writeLoRA(t, dir, "l.safetensors", fluxModules(rand.New(rand.NewPCG(4, 4)), 3), lora.WriteOptions{Style: lora.StylePEFT})
	fused := filepath.Join(dir, "fused.safetensors")
	rep := fuse(t, FuseOptions{Model: b.q, Out: fused, LoRAs: []LoRASpec{{Path: lp, Strength: 0.7}}, W4A16: W4A16Branch})
	touched := map[string]bool{}
	for _, l := range rep.Layers {
		if l.Kind != "kept" {
			touched[l.Name] = true
		}
	}
	if !touched["transformer_blocks.0.qkv_proj"] || !touched["transformer_blocks.0.norm1.linear"] {
		t.Fatalf("the LoRA does not touch a W4A4 and a W4A16 layer: %+v", rep.Layers)
	}
	// The file's one rank (32 here, the base's 16) rewrites the W4A4
	// layers the LoRA does not touch too: widened with zero columns.
	bq, err := openQuantized(b.q)
	if err != nil {
		t.Fatal(err)
	}
	for _, lm := range bq.meta.Layers {
		if lm.Kind == nunchaku.KindW4A4 && rep.Rank != lm.R {
			touched[lm.Name] = true
		}
	}
	bq.Close()
	before, err := VerifyIntegrity(b.q, nil)
	if err != nil {
		t.Fatal(err)
	}
	after, err := VerifyIntegrity(fused, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range after {
		if a.Status != IntegrityOK {
			t.Errorf("fused %s: %+v", a.Name, a)
		}
		if changed := a.Recorded != before[i].Recorded; changed != touched[a.Name] {
			t.Errorf("fused %s: hash changed %v, layer rewritten %v", a.Name, changed, touched[a.Name])
		}
	}
	out := filepath.Join(dir, "base.safetensors")
	if rep := fuse(t, FuseOptions{Model: fused, Out: out, RemoveAll: true}); !rep.Restored {
		t.Fatal("--remove-all did not restore the base")
	}
}
