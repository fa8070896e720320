package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant"
)

// unfixed returns copies of the family's contracts without the
// architecture an engine hard-codes, for synthetic files narrower than
// the real model (TestContractFullSize checks that rule at real size).
func unfixed(family string) []*engine.Contract {
	var out []*engine.Contract
	for _, c := range engine.For(family) {
		cc := *c
		cc.Fixed = nil
		out = append(out, &cc)
	}
	return out
}

// checkFileContracts opens a written file and checks it against cs.
func checkFileContracts(t *testing.T, path string, cs []*engine.Contract) {
	t.Helper()
	r, err := safetensors.OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f := engineFile(r)
	for _, c := range cs {
		if p := engine.Check(c, f); len(p) != 0 {
			t.Errorf("%s does not load in %s: %q", path, c.Key(), p)
		}
	}
}

// contractCases are the families nunchaku runs, at widths whose every
// layer is a multiple of 128 (the Python loaders build exact widths).
var contractCases = []struct {
	arch  string
	scale float64
}{
	{"flux-dev", 0.25}, {"flux-schnell", 0.25}, {"sana", 0.2}, {"qwen-image", 0.25}, {"sdxl", 0.2}, {"z-image", 0.2},
}

// TestContractFamilies: for every family × precision, synth → quantize →
// the file satisfies every engine's contract, and so does its fuse-lora
// output; then convert to each single engine and back to all, and the file
// still does. SDXL's loader reads no
// wtscale: its NVFP4 layers carry a power-of-two tensor scale as uniform
// wcscales, and check's emulation (which reads it back) still matches.
func TestContractFamilies(t *testing.T) {
	for _, c := range contractCases {
		dir := t.TempDir()
		if err := synth.Generate(synth.Options{Arch: c.arch, Out: dir, Scale: c.scale, Blocks: 1, Samples: 32, Seed: 3}); err != nil {
			t.Fatalf("%s: %v", c.arch, err)
		}
		model, calib := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
		for _, prec := range []quant.Precision{quant.INT4, quant.NVFP4} {
			name := fmt.Sprintf("%s/%v", c.arch, prec)
			out := filepath.Join(dir, prec.String()+".safetensors")
			opt := fastOptions(model, calib, out)
			opt.Rank, opt.Precision, opt.Iters, opt.Search = 32, prec, -1, quant.SearchOff
			if _, err := Quantize(opt); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			checkFileContracts(t, out, unfixed(c.arch))
			// After fuse-lora (a LoRA on an attention projection and an
			// MLP's second linear), the file still satisfies every engine.
			fused := filepath.Join(dir, prec.String()+"-lora.safetensors")
			if _, err := FuseLoRA(FuseOptions{Model: out, Out: fused, W4A16: W4A16Skip,
				LoRAs: []LoRASpec{{Path: contractLoRA(t, model, dir), Strength: 0.7}}}); err != nil {
				t.Fatalf("%s: fuse-lora: %v", name, err)
			}
			checkFileContracts(t, fused, unfixed(c.arch))
			for _, e := range append(engineNames(c.arch), "all") {
				conv := filepath.Join(dir, prec.String()+"-"+e+".safetensors")
				if _, err := Convert(ConvertOptions{In: out, Out: conv, Target: e}); err != nil {
					t.Fatalf("%s: convert --target %s: %v", name, e, err)
				}
				var cs []*engine.Contract
				for _, x := range unfixed(c.arch) {
					if e == "all" || x.Engine == e {
						cs = append(cs, x)
					}
				}
				checkFileContracts(t, conv, cs)
			}
		}
	}
}

// contractLoRA writes (once per dir) a rank-8 PEFT LoRA on the first
// attention q projection and the first MLP output linear of the source
// checkpoint, and returns its path.
func contractLoRA(t *testing.T, model, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "lora.safetensors")
	if _, err := os.Stat(path); err == nil {
		return path
	}
	r, err := safetensors.OpenCheckpoint(model)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var mods []lora.Factors
	rng := rand.New(rand.NewPCG(7, 8))
	for _, suffixes := range [][]string{
		{"attn.to_q.weight", "attention.to_q.weight", "attn1.to_q.weight"},
		{"ff.net.2.weight", "feed_forward.w2.weight", "img_mlp.net.2.weight", "ff.conv_point.weight"},
	} {
		for _, n := range r.Names() {
			if !slices.ContainsFunc(suffixes, func(s string) bool { return strings.HasSuffix(n, s) }) {
				continue
			}
			info, _ := r.Info(n)
			f := lora.Factors{Module: strings.TrimSuffix(n, ".weight"), Rank: 8, N: int(info.Shape[0]), K: int(info.Shape[1]), Alpha: 8}
			f.A, f.B = make([]float32, 8*f.K), make([]float32, f.N*8)
			for i := range f.A {
				f.A[i] = float32(rng.NormFloat64() * 0.02)
			}
			for i := range f.B {
				f.B[i] = float32(rng.NormFloat64() * 0.02)
			}
			mods = append(mods, f)
			break
		}
	}
	if len(mods) != 2 {
		t.Fatalf("%s: found %d LoRA targets", model, len(mods))
	}
	if err := lora.Write(path, mods, lora.WriteOptions{Style: lora.StylePEFT}); err != nil {
		t.Fatal(err)
	}
	return path
}

func engineNames(family string) []string {
	var out []string
	for _, c := range engine.For(family) {
		out = append(out, c.Engine)
	}
	return out
}

// TestContractConvertExact: converting a Qwen-Image file to Python names
// and back to C++ names gives the same tensors byte for byte (renames and
// zero-bias handling only), and the Python-named file unpacks to the same
// logical layers as the original.
func TestContractConvertExact(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "sdxl", Out: dir, Scale: 0.2, Blocks: 1, Samples: 32, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	model, calib := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	out := filepath.Join(dir, "q.safetensors")
	opt := fastOptions(model, calib, out)
	opt.Iters, opt.Search = -1, quant.SearchOff
	if _, err := Quantize(opt); err != nil {
		t.Fatal(err)
	}
	// SDXL's layout writes no bias on attn1.to_qkv / attn2.to_q.
	r, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Join(r.Names(), " ")
	r.Close()
	if strings.Contains(names, "attn1.to_qkv.bias") || strings.Contains(names, "attn2.to_q.bias") || !strings.Contains(names, "attn1.to_out.0.bias") {
		t.Fatal("SDXL bias tensors not as the loader builds them")
	}
	conv := filepath.Join(dir, "c.safetensors")
	rep, err := Convert(ConvertOptions{In: out, Out: conv})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Renamed != 0 || rep.Padded != 0 {
		t.Fatalf("converting an SDXL file for its own engines changed %d tensors, widened %d layers", rep.Renamed, rep.Padded)
	}
	a, b := fileTensors(t, out), fileTensors(t, conv)
	if len(a) != len(b) {
		t.Fatalf("%d tensors, converted %d", len(a), len(b))
	}
	for n, x := range a {
		if b[n] != x {
			t.Fatalf("tensor %s differs after convert", n)
		}
	}
}

// fileTensors reads every tensor of a file as strings.
func fileTensors(t *testing.T, path string) map[string]string {
	t.Helper()
	r, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := map[string]string{}
	for _, n := range r.Names() {
		b, err := r.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = string(b)
	}
	return out
}

// TestContractFullSize plans FLUX.1-dev, FLUX.1-schnell and Qwen-Image at
// their real sizes (a sparse checkpoint: header only, data a hole) and
// checks the planned output header against every engine, hard-coded
// architectures included: FLUX in V1, V2 and ComfyUI, Qwen-Image in
// diffusers and ComfyUI.
func TestContractFullSize(t *testing.T) {
	for _, arch := range []string{"flux-dev", "flux-schnell", "qwen-image"} {
		path := sparseSkeleton(t, arch)
		for _, prec := range []quant.Precision{quant.INT4, quant.NVFP4} {
			plan, r, err := QuantizePlan(PlanOptions{Model: path, Precision: prec})
			if err != nil {
				t.Fatalf("%s: %v", arch, err)
			}
			r.Close()
			vs, err := plan.Verdicts("svdq test")
			if err != nil {
				t.Fatal(err)
			}
			if len(vs) != len(engine.For(arch)) {
				t.Fatalf("%s: %d verdicts", arch, len(vs))
			}
			for _, v := range vs {
				if !v.Loads {
					t.Errorf("%s %v: does not load in %s: %q", arch, prec, v.Engine, v.Problems)
				}
			}
			f, _ := plan.OutputFile("svdq test")
			if strings.HasPrefix(arch, "flux") {
				var cc struct {
					ModelClass  string         `json:"model_class"`
					ModelConfig map[string]any `json:"model_config"`
				}
				if err := json.Unmarshal([]byte(f.Metadata["comfy_config"]), &cc); err != nil {
					t.Fatal(err)
				}
				want := map[string]string{"flux-dev": "Flux", "flux-schnell": "FluxSchnell"}[arch]
				if cc.ModelClass != want || cc.ModelConfig["in_channels"] != 16.0 || cc.ModelConfig["hidden_size"] != 3072.0 ||
					cc.ModelConfig["depth"] != 19.0 || cc.ModelConfig["depth_single_blocks"] != 38.0 {
					t.Errorf("%s comfy_config %s", arch, f.Metadata["comfy_config"])
				}
			}
		}
	}
}

// sparseSkeleton writes the family's real-size skeleton as a sparse
// checkpoint (writeSparse) and returns its path.
func sparseSkeleton(t *testing.T, arch string) string {
	t.Helper()
	fam, err := preset.Lookup(arch)
	if err != nil {
		t.Fatal(err)
	}
	specs, err := fam.Skeleton(preset.SkeletonOptions{Scale: 1})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.safetensors")
	writeSparse(t, path, specs)
	return path
}

// writeSparse writes a safetensors file with the given tensors whose data
// section is a hole (zeros, no disk blocks): enough for header-only plans.
func writeSparse(t *testing.T, path string, specs []preset.TensorSpec) {
	t.Helper()
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	hdr := map[string]any{}
	var off int64
	for _, s := range specs {
		n := int64(2)
		for _, d := range s.Shape {
			n *= d
		}
		hdr[s.Name] = map[string]any{"dtype": "BF16", "shape": s.Shape, "data_offsets": []int64{off, off + n}}
		off += n
	}
	b, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	for len(b)%8 != 0 {
		b = append(b, ' ')
	}
	head := binary.LittleEndian.AppendUint64(nil, uint64(len(b)))
	head = append(head, b...)
	if err := os.WriteFile(path, head, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(head))+off); err != nil {
		t.Fatal(err)
	}
}

// oldLayout rewrites a file the way svdq wrote every file before the
// loader contract (C++ tensor names everywhere, a bias on every W4A4 layer,
// no comfy_config), so that inspect can be tested on such files.
func oldLayout(t *testing.T, in, out string) {
	t.Helper()
	r, err := safetensors.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	md := r.Metadata()
	delete(md, engine.MetaComfyConfig)
	rename := map[string]string{"smooth_factor": "smooth", "smooth_factor_orig": "smooth_orig", "proj_down": "lora_down", "proj_up": "lora_up"}
	var specs []safetensors.Spec
	data := map[string][]byte{}
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		b, _ := r.Bytes(n)
		name := n
		if i := strings.LastIndexByte(n, '.'); i > 0 && rename[n[i+1:]] != "" {
			name = n[:i+1] + rename[n[i+1:]]
		}
		specs = append(specs, safetensors.Spec{Name: name, DType: info.DType, Shape: info.Shape})
		data[name] = b
		if strings.HasSuffix(n, ".qweight") && info.DType == safetensors.I8 {
			bias := strings.TrimSuffix(n, "qweight") + "bias"
			if _, ok := r.Info(bias); !ok {
				specs = append(specs, safetensors.Spec{Name: bias, DType: safetensors.BF16, Shape: []int64{info.Shape[0]}})
				data[bias] = make([]byte, 2*info.Shape[0])
			}
		}
	}
	w, err := safetensors.Create(out, specs, md)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	for _, s := range specs {
		if err := w.Write(s.Name, data[s.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestInspectOldLayout: inspect names, per engine, why a file in the
// pre-contract layout does not load — the failures the loaders issue
// lists: Qwen-Image's C++ names (diffusers and ComfyUI), SDXL's zero bias
// on bias-free modules, FLUX's missing comfy_config (ComfyUI only; V1 and
// V2 still load it, apart from the synthetic width) — and that convert
// repairs each.
func TestInspectOldLayout(t *testing.T) {
	for _, c := range []struct {
		arch  string
		scale float64
		want  map[string]string // engine → a problem it must name ("" : loads)
	}{
		{"qwen-image", 0.25, map[string]string{engine.Python: "tensor names the loader does not read", engine.ComfyUI: "tensor names the loader does not read"}},
		{"sdxl", 0.2, map[string]string{engine.Python: "a bias tensor where the loader builds the module without one"}},
		{"flux-dev", 0.25, map[string]string{engine.Python: "", engine.ComfyUI: "no comfy_config metadata"}},
	} {
		dir := t.TempDir()
		if err := synth.Generate(synth.Options{Arch: c.arch, Out: dir, Scale: c.scale, Blocks: 1, Samples: 32, Seed: 9}); err != nil {
			t.Fatal(err)
		}
		opt := fastOptions(filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile), filepath.Join(dir, "q.safetensors"))
		opt.Iters, opt.Search = -1, quant.SearchOff
		if _, err := Quantize(opt); err != nil {
			t.Fatal(err)
		}
		old := filepath.Join(dir, "old.safetensors")
		oldLayout(t, opt.Out, old)
		in, err := Inspect(old, InspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for e, want := range c.want {
			var v *engine.Verdict
			for i := range in.Engines {
				if in.Engines[i].Engine == e {
					v = &in.Engines[i]
				}
			}
			switch {
			case v == nil:
				t.Errorf("%s: no verdict for %s", c.arch, e)
			case want == "" && !v.Loads:
				t.Errorf("%s: %s: %q, want it to load", c.arch, e, v.Problems)
			case want != "" && !strings.Contains(strings.Join(v.Problems, "\n"), want):
				t.Errorf("%s: %s: %q, want %q", c.arch, e, v.Problems, want)
			}
		}
		fixed := filepath.Join(dir, "fixed.safetensors")
		if _, err := Convert(ConvertOptions{In: old, Out: fixed}); err != nil {
			t.Fatal(err)
		}
		checkFileContracts(t, fixed, unfixed(c.arch))
	}
}

// TestComfyConfigVariants: FLUX.1 Fill (x_embedder reads 384 = 96 latent
// channels × 4) and Canny/Depth (128 = 32 × 4) get ComfyUI-nunchaku's
// in_channels 96 and 32 (its flux.1-fill-dev.json, flux.1-canny-dev.json,
// flux.1-depth-dev.json) with out_channels 16, and still load in every
// FLUX engine at real size.
func TestComfyConfigVariants(t *testing.T) {
	for _, c := range []struct{ in, want int64 }{{384, 96}, {128, 32}} {
		fam, _ := preset.Lookup("flux-dev")
		specs, err := fam.Skeleton(preset.SkeletonOptions{Scale: 1})
		if err != nil {
			t.Fatal(err)
		}
		for i := range specs {
			if specs[i].Name == "x_embedder.weight" {
				specs[i].Shape = []int64{3072, c.in}
			}
		}
		path := filepath.Join(t.TempDir(), "model.safetensors")
		writeSparse(t, path, specs)
		plan, r, err := QuantizePlan(PlanOptions{Model: path})
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		f, err := plan.OutputFile("svdq test")
		if err != nil {
			t.Fatal(err)
		}
		var cc struct {
			ModelConfig map[string]any `json:"model_config"`
		}
		if err := json.Unmarshal([]byte(f.Metadata["comfy_config"]), &cc); err != nil {
			t.Fatal(err)
		}
		if cc.ModelConfig["in_channels"] != float64(c.want) || cc.ModelConfig["out_channels"] != 16.0 {
			t.Errorf("x_embedder in %d: comfy_config %s", c.in, f.Metadata["comfy_config"])
		}
		vs, _ := plan.Verdicts("svdq test")
		for _, v := range vs {
			if !v.Loads {
				t.Errorf("x_embedder in %d: %s: %q", c.in, v.Engine, v.Problems)
			}
		}
	}
}
