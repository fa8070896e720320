package model

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// finetune writes a "fine-tune" of the 16-bit checkpoint src as a sharded
// folder (two shards and an index, as diffusers saves it): every tensor
// copied, the named weights changed by a rank-2 part plus Gaussian noise
// (a ΔW that is not low-rank), and the named biases shifted. It returns
// the folder and, per changed weight, ΔW = W_ft − W_src as this test
// computes it.
func finetune(t *testing.T, dir, src string, weights, biases []string) (string, map[string][]float64) {
	r, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rng := rand.New(rand.NewPCG(31, 31))
	deltas := map[string][]float64{}
	change := map[string]bool{}
	for _, w := range weights {
		change[w] = true
	}
	for _, b := range biases {
		change[b] = true
	}
	var shards [2][]safetensors.Tensor
	shardNames := [2]string{"diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"}
	index := map[string]string{}
	for i, name := range r.Names() {
		info, _ := r.Info(name)
		raw, err := r.Bytes(name)
		if err != nil {
			t.Fatal(err)
		}
		data := append([]byte(nil), raw...)
		if change[name] {
			if info.DType != safetensors.BF16 {
				t.Fatalf("%s is %s", name, info.DType)
			}
			v := make([]float32, info.Elems())
			if err := quant.Decode(v, "BF16", raw); err != nil {
				t.Fatal(err)
			}
			ft := append([]float32(nil), v...)
			if len(info.Shape) == 2 {
				n, k := int(info.Shape[0]), int(info.Shape[1])
				u, vv := gauss(rng, n*2, 0.1), gauss(rng, 2*k, 0.1)
				low := mm(u, vv, n, 2, k)
				for j := range ft {
					ft[j] = quant.RoundBF16(float32(float64(v[j]) + low[j] + 0.01*rng.NormFloat64()))
				}
				d := make([]float64, len(v))
				for j := range d {
					d[j] = float64(ft[j]) - float64(v[j])
				}
				deltas[name] = d
			} else {
				for j := range ft {
					ft[j] = quant.RoundBF16(ft[j] + 0.5)
				}
			}
			data = quant.BF16.Encode(ft)
		}
		s := i % 2
		shards[s] = append(shards[s], safetensors.Tensor{Spec: info.Spec(), Data: data})
		index[name] = shardNames[s]
	}
	folder := filepath.Join(dir, "finetuned")
	if err := os.MkdirAll(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	for s, ts := range shards {
		if err := safetensors.WriteFile(filepath.Join(folder, shardNames[s]), ts, nil); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": index})
	if err := os.WriteFile(filepath.Join(folder, "diffusion_pytorch_model.safetensors.index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	return folder, deltas
}

// TestFuseDeltaFinetune: a full fine-tune of the synthetic FLUX (a sharded
// folder) fuses as ΔW = W_ft − W_base with --delta-energy 0.9: each W4A4
// layer it touches (the fused qkv, the single block's proj_out split by
// columns into out_proj and mlp_fc2) gets the truncated SVD of the ΔW this
// test computes, at the rank the energy rule gives, with the error the
// report gives; the kept embedder comes out as the fine-tune's own bytes;
// changed biases are refused, naming them, unless --allow-unmatched;
// --remove-all restores the base byte for byte.
func TestFuseDeltaFinetune(t *testing.T) {
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux")
	ws := []string{"transformer_blocks.0.attn.to_k.weight", "single_transformer_blocks.0.proj_out.weight", "x_embedder.weight"}
	ft, deltas := finetune(t, dir, b.src, ws, nil)
	out := filepath.Join(dir, "fused.safetensors")
	spec := []LoRASpec{{Path: ft, Base: b.src, Strength: 1, Name: "ft"}}
	rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: spec, Trunc: lora.TruncOptions{Energy: 0.9}})

	fused, err := openQuantized(out)
	if err != nil {
		t.Fatal(err)
	}
	defer fused.Close()
	prov, err := lora.ParseProvenance(fused.r.Metadata()[lora.MetaKey])
	if err != nil {
		t.Fatal(err)
	}
	ix := fusedIndex(t, fused)
	want := map[string][]float64{} // layer → ΔW
	for name, d := range deltas {
		module := strings.TrimSuffix(name, ".weight")
		ts, ok := ix.Resolve(module)
		if !ok {
			t.Fatalf("%s does not resolve", module)
		}
		for _, tg := range ts {
			li := ix.Layers[tg.Layer]
			if want[tg.Layer] == nil {
				want[tg.Layer] = make([]float64, li.N*li.K)
			}
			srcK := int(math.Round(float64(len(d)) / float64(tg.SrcRows.Hi))) // the module's K (rows start at 0)
			for i := tg.Rows.Lo; i < tg.Rows.Hi; i++ {
				for j := 0; j < li.K; j++ {
					want[tg.Layer][i*li.K+j] = d[(tg.SrcRows.Lo+i-tg.Rows.Lo)*srcK+tg.Cols.Lo+j]
				}
			}
		}
	}
	layers := map[string]bool{}
	for _, tr := range rep.Truncated {
		layers[tr.Layer] = true
		w := want[tr.Layer]
		lm, ok := fused.meta.Layer(tr.Layer)
		if w == nil || !ok {
			t.Fatalf("truncation on %s, which the fine-tune does not change", tr.Layer)
		}
		ql, err := fused.unpackW4A4(lm)
		if err != nil {
			t.Fatal(err)
		}
		rg := prov.LoRAs[0].Ranges[tr.Layer]
		got := lora.LayerBranch(ql).Slice(rg[0], rg[1]).Delta()
		var num, den float64
		for i := range got {
			num += (got[i] - w[i]) * (got[i] - w[i])
			den += w[i] * w[i]
		}
		rel := math.Sqrt(num / den)
		t.Logf("%-40s rank %d of %d, energy %.4f, error %.4f (measured here %.4f)", tr.Layer, tr.Rank, tr.Full, tr.Energy, tr.Error, rel)
		if tr.LoRA != "ft" || tr.Rows != 0 || tr.Energy < 0.9 || tr.Rank >= tr.Full || rg[1]-rg[0] != tr.Rank ||
			math.Abs(tr.Error-rel) > 0.01 || math.Abs(tr.Error-math.Sqrt(1-tr.Energy)) > 0.01 {
			t.Errorf("%s: %+v, range %v, measured error %v", tr.Layer, tr, rg, rel)
		}
	}
	for _, l := range []string{"transformer_blocks.0.qkv_proj", "single_transformer_blocks.0.out_proj", "single_transformer_blocks.0.mlp_fc2"} {
		if !layers[l] {
			t.Errorf("no truncation reported for %s: %+v", l, rep.Truncated)
		}
	}
	// The kept embedder: round16(W_base + (W_ft − W_base)) is W_ft.
	ftr, err := safetensors.OpenCheckpoint(ft)
	if err != nil {
		t.Fatal(err)
	}
	defer ftr.Close()
	if !bytes.Equal(rawOf(t, fused.r, "x_embedder.weight"), rawOf(t, ftr, "x_embedder.weight")) {
		t.Errorf("x_embedder.weight is not the fine-tune's")
	}
	if prov.LoRAs[0].Format != lora.StyleDiff || prov.LoRAs[0].Name != "ft" {
		t.Errorf("record %+v", prov.LoRAs[0])
	}

	// check --delta: the fused file against base + the full ΔW is closer
	// than against the plain base on every touched layer.
	var names []string
	for l := range layers {
		names = append(names, regexp.QuoteMeta(l))
	}
	only := regexp.MustCompile("^(" + strings.Join(names, "|") + ")$")
	errs := func(loras []LoRASpec) map[string]float64 {
		r, _, err := Check(CheckOptions{Model: out, Reference: b.src, Calib: b.calib, Search: quant.SearchOff, Workers: 2, LoRAs: loras, Layers: only})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]float64{}
		for _, l := range r.Layers {
			m[l.Name] = l.RelError[MethodSVDQuant]
		}
		return m
	}
	with, without := errs(spec), errs(nil)
	for l := range layers {
		t.Logf("%-40s check against base+ΔW %.4f, against base %.4f", l, with[l], without[l])
		if !(with[l] < without[l]) {
			t.Errorf("%s: check --delta error %v not below the plain check's %v", l, with[l], without[l])
		}
	}

	back := filepath.Join(dir, "back.safetensors")
	if r := fuse(t, FuseOptions{Model: out, Out: back, RemoveAll: true}); !r.Restored || !bytes.Equal(fileBytes(t, back), fileBytes(t, b.q)) {
		t.Errorf("remove-all did not restore the base")
	}

	// Changed biases cannot be carried: refused by name, or skipped.
	dir2 := t.TempDir()
	ft2, _ := finetune(t, dir2, b.src, ws[:1], []string{"transformer_blocks.0.attn.to_k.bias"})
	spec2 := []LoRASpec{{Path: ft2, Base: b.src, Strength: 1}}
	_, err = FuseLoRA(FuseOptions{Model: b.q, Out: filepath.Join(dir2, "o.safetensors"), LoRAs: spec2, Trunc: lora.TruncOptions{Rank: 4}})
	if err == nil || !strings.Contains(err.Error(), "transformer_blocks.0.attn.to_k.bias") || !strings.Contains(err.Error(), "not 2-D weights") {
		t.Errorf("bias delta: %v", err)
	}
	rep2 := fuse(t, FuseOptions{Model: b.q, Out: filepath.Join(dir2, "o.safetensors"), LoRAs: spec2, Trunc: lora.TruncOptions{Rank: 4}, AllowUnmatched: true})
	if len(rep2.Truncated) != 1 || rep2.Truncated[0].Rank != 4 || len(rep2.Warnings) == 0 {
		t.Errorf("rank 4: %+v, warnings %v", rep2.Truncated, rep2.Warnings)
	}
	// The output may not be a shard of the fine-tune.
	shard := filepath.Join(ft, "diffusion_pytorch_model-00001-of-00002.safetensors")
	if _, err := FuseLoRA(FuseOptions{Model: b.q, Out: shard, LoRAs: spec, Trunc: lora.TruncOptions{Rank: 4}}); err == nil || !strings.Contains(err.Error(), "overwrite") {
		t.Errorf("output is a shard of --delta: %v", err)
	}
}
