package model

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// fixedFreeVerdicts returns, per engine that runs the file's family, why
// the file does not load there, judged without the architecture the
// engine hard-codes (the synthetic files are narrower than the real
// models; fusion never changes the architecture).
func fixedFreeVerdicts(t *testing.T, path string) map[string][]string {
	t.Helper()
	r, err := safetensors.OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f := engineFile(r)
	meta, err := nunchaku.ParseMeta(f.Metadata[nunchaku.MetaSVDQ])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, c := range engine.For(meta.Family) {
		cc := *c
		cc.Fixed = nil
		out[c.Engine] = engine.Check(&cc, f)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no engine runs family %s", path, meta.Family)
	}
	return out
}

// someLayersLoRA returns a LoRA (diffusers names, shapes from the source
// checkpoint) over the source modules of every third W4A4 layer of b's
// quantized checkpoint and over its first kept 2-D 16-bit weight.
func someLayersLoRA(t *testing.T, b loraBase, rng *rand.Rand, r int) []lora.Factors {
	t.Helper()
	q, err := openQuantized(b.q)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	src, err := safetensors.OpenCheckpoint(b.src)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var mods []lora.Factors
	seen := map[string]bool{}
	add := func(tensor string) {
		info, ok := src.Info(tensor)
		if !ok || len(info.Shape) != 2 {
			t.Fatalf("%s: no 2-D tensor %s", b.src, tensor)
		}
		if seen[tensor] {
			return
		}
		seen[tensor] = true
		n, k := int(info.Shape[0]), int(info.Shape[1])
		f := lora.Factors{Module: strings.TrimSuffix(tensor, ".weight"), Rank: r, N: n, K: k,
			A: make([]float32, r*k), B: make([]float32, n*r), Alpha: float64(r)}
		for i := range f.A {
			f.A[i] = float32(rng.NormFloat64() * 0.2)
		}
		for i := range f.B {
			f.B[i] = float32(rng.NormFloat64() * 0.05)
		}
		mods = append(mods, f)
	}
	i := 0
	for _, lm := range q.meta.Layers {
		if lm.Kind != nunchaku.KindW4A4 {
			continue
		}
		if i%3 == 0 {
			for _, s := range lm.Sources {
				add(s.Tensor)
			}
		}
		i++
	}
	names := append([]string(nil), q.r.Names()...)
	sort.Strings(names)
	inLayer := map[string]bool{}
	for _, g := range nunchaku.Layers(names) {
		for _, s := range g.Suffixes {
			inLayer[g.Name+"."+s] = true
		}
	}
	for _, n := range names {
		info, _ := q.r.Info(n)
		if strings.HasSuffix(n, ".weight") && !inLayer[n] && len(info.Shape) == 2 && (info.DType == safetensors.BF16 || info.DType == safetensors.F16) {
			add(n)
			return mods
		}
	}
	t.Fatalf("%s: no kept 2-D weight", b.q)
	return nil
}

// storedRanks returns the stored rank of every W4A4 layer of a file (its
// lora_down's, C++ or Python name) and the svdq entry.
func storedRanks(t *testing.T, path string) (map[string]int, *nunchaku.Meta) {
	t.Helper()
	f, err := openQuantized(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int{}
	for _, lm := range f.meta.Layers {
		if lm.Kind != nunchaku.KindW4A4 {
			continue
		}
		d, ok := f.r.Info(lm.Name + ".lora_down")
		if !ok {
			d, ok = f.r.Info(lm.Name + ".proj_down")
		}
		u, oku := f.r.Info(lm.Name + ".lora_up")
		if !oku {
			u, oku = f.r.Info(lm.Name + ".proj_up")
		}
		if !ok || !oku || d.Shape[1] != u.Shape[1] {
			t.Fatalf("%s: layer %s: down %v, up %v", path, lm.Name, d.Shape, u.Shape)
		}
		out[lm.Name] = int(d.Shape[1])
	}
	return out, f.meta
}

// sameFused fails unless two fused files and their sidecars (or the lack
// of one) are byte-identical.
func sameFused(t *testing.T, a, b string) {
	t.Helper()
	if !bytes.Equal(fileBytes(t, a), fileBytes(t, b)) {
		t.Fatalf("%s and %s differ", a, b)
	}
	sa, ea := os.ReadFile(a + lora.SidecarSuffix)
	sb, eb := os.ReadFile(b + lora.SidecarSuffix)
	if (ea == nil) != (eb == nil) || !bytes.Equal(sa, sb) {
		t.Fatalf("sidecars of %s and %s differ (%v, %v)", a, b, ea, eb)
	}
}

func absentFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Fatalf("%s exists", path)
	}
}

// TestFuseOneRank: on FLUX, Qwen-Image (Python names) and SDXL files made
// by Quantize, a LoRA over some W4A4 layers and a kept tensor gives a file
// whose every W4A4 layer stores one rank, quantization_config's, larger
// than the base's (the untouched layers widened with zero columns, the
// svdq entry describing what is stored); every engine that loads the input
// loads the output, with the same verdicts; the kept tensor's base and
// factors are in the sidecar, none in the file; removing the LoRA gives
// the base bytes back (the untouched layers narrowed again); without its
// sidecar, the fused file cannot be changed and the error names the
// missing file.
func TestFuseOneRank(t *testing.T) {
	for _, which := range []string{"flux", "qwen-image", "sdxl"} {
		t.Run(which, func(t *testing.T) {
			b := loraCheckpoint(t, which)
			dir := t.TempDir()
			lp := writeLoRA(t, dir, "l.safetensors", someLayersLoRA(t, b, rand.New(rand.NewPCG(31, 7)), 8), lora.WriteOptions{Style: lora.StylePEFT})
			out := filepath.Join(dir, "fused.safetensors")
			var warned []string
			rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 0.5}}, W4A16: W4A16Auto,
				OnWarn: func(s string) { warned = append(warned, s) }})
			if len(warned) > 0 {
				t.Errorf("warnings: %q", warned)
			}

			// One rank.
			base, _ := storedRanks(t, b.q)
			ranks, meta := storedRanks(t, out)
			_, md := tensorsOf(t, out)
			_, qcRank, err := nunchaku.ParseQuantizationConfig(md[nunchaku.MetaQuantizationConfig])
			if err != nil {
				t.Fatal(err)
			}
			touched, w4a4Touched := map[string]bool{}, 0
			for _, l := range rep.Layers {
				touched[l.Name] = true
				if l.Kind == "w4a4" {
					w4a4Touched++
				}
			}
			if qcRank != rep.Rank || qcRank <= base[meta.Layers[0].Name] || w4a4Touched == 0 || rep.Resized != len(ranks)-w4a4Touched {
				t.Fatalf("quantization_config rank %d, report rank %d, base rank %d, %d W4A4 layers touched, %d resized of %d",
					qcRank, rep.Rank, base[meta.Layers[0].Name], w4a4Touched, rep.Resized, len(ranks))
			}
			for l, r := range ranks {
				lm, _ := meta.Layer(l)
				if r != qcRank || lora.PadRank(lm.R) != r {
					t.Errorf("layer %s (touched %v): stored rank %d, svdq entry r %d, quantization_config rank %d", l, touched[l], r, lm.R, qcRank)
				}
			}
			ints, err := VerifyIntegrity(out, nil)
			if err != nil {
				t.Fatal(err)
			}
			if bad := Mismatches(ints); len(bad) > 0 {
				t.Errorf("hashes: %+v", bad)
			}

			// Where it loads.
			in, got := fixedFreeVerdicts(t, b.q), fixedFreeVerdicts(t, out)
			for e, p := range in {
				if len(p) != 0 {
					t.Errorf("the input does not load in %s: %q", e, p)
				}
			}
			if !reflect.DeepEqual(in, got) {
				t.Errorf("verdicts: input %q, output %q", in, got)
			}
			r, err := safetensors.Open(b.q)
			if err != nil {
				t.Fatal(err)
			}
			want := engine.CheckAll(meta.Family, engineFile(r))
			r.Close()
			for i, v := range rep.Engines {
				if i >= len(want) || v.Engine != want[i].Engine || v.Loads != want[i].Loads {
					t.Errorf("report verdict %+v, input's %+v", v, want)
				}
			}

			// The sidecar.
			side := out + lora.SidecarSuffix
			prov, err := lora.ParseProvenance(md[lora.MetaKey])
			if err != nil {
				t.Fatal(err)
			}
			if rep.Sidecar != side || prov.Sidecar == nil || prov.Sidecar.File != filepath.Base(side) || prov.Sidecar.SHA256 != hashOf(t, side) {
				t.Fatalf("sidecar %q, record %+v", rep.Sidecar, prov.Sidecar)
			}
			ft, _ := tensorsOf(t, out)
			for n := range ft {
				if strings.HasPrefix(n, lora.ReservedPrefix) {
					t.Errorf("%s in the fused file", n)
				}
			}
			st, smd := tensorsOf(t, side)
			kept := 0
			for n := range prov.Layers {
				if prov.Layers[n].Kind == "kept" {
					kept++
					for _, x := range []string{lora.ReservedBase(n), lora.ReservedDown(n), lora.ReservedUp(n)} {
						if _, ok := st[x]; !ok {
							t.Errorf("sidecar lacks %s", x)
						}
					}
				}
			}
			if kept != 1 || len(st) != 3 || smd[lora.SidecarMetaKey] != prov.Base.SHA256 {
				t.Errorf("%d kept layers, sidecar tensors %d, metadata %q", kept, len(st), smd)
			}

			// Removal.
			back := filepath.Join(dir, "back.safetensors")
			if rep := fuse(t, FuseOptions{Model: out, Out: back, RemoveAll: true}); !rep.Restored || rep.Rank != 0 || rep.Resized != len(ranks)-w4a4Touched {
				t.Errorf("remove-all: restored %v, rank %d, resized %d", rep.Restored, rep.Rank, rep.Resized)
			}
			if !bytes.Equal(fileBytes(t, back), fileBytes(t, b.q)) {
				t.Fatal("--remove-all does not give the base bytes back")
			}
			absentFile(t, back+lora.SidecarSuffix)

			// Without the sidecar.
			if err := os.Rename(side, side+".away"); err != nil {
				t.Fatal(err)
			}
			again := filepath.Join(dir, "again.safetensors")
			_, err = FuseLoRA(FuseOptions{Model: out, Out: again, RemoveAll: true})
			if err == nil || !strings.Contains(err.Error(), side) || !strings.Contains(err.Error(), "missing") {
				t.Errorf("missing sidecar: %v", err)
			}
			absentFile(t, again)
		})
	}
}

func hashOf(t *testing.T, path string) string {
	t.Helper()
	s, err := hashFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFuseW4A16Auto: --w4a16 auto refuses a branch on W4A16 layers of a
// file nunchaku-python loads (its AWQW4A16Linear has none), naming the
// engine and the way out; --w4a16 branch writes it with a warning naming
// that engine; on an F16 file for nunchaku's C++ engine (which
// nunchaku-python, BF16 only, does not load) auto writes it, and the
// output loads where the input does.
func TestFuseW4A16Auto(t *testing.T) {
	dir := t.TempDir()
	mods := fluxModules(rand.New(rand.NewPCG(41, 41)), 2)
	lp := writeLoRA(t, dir, "l.safetensors", mods, lora.WriteOptions{Style: lora.StylePEFT})
	b := loraCheckpoint(t, "flux")
	out := filepath.Join(dir, "out.safetensors")
	_, err := FuseLoRA(FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 1}}})
	if err == nil || !strings.Contains(err.Error(), "the input loads in nunchaku-python") || !strings.Contains(err.Error(), "--w4a16 skip") ||
		!strings.Contains(err.Error(), "norm") || !strings.Contains(err.Error(), "--w4a16 branch for a file you will load only in nunchaku-cpp, comfyui") {
		t.Errorf("auto on a nunchaku-python file: %v", err)
	}
	absentFile(t, out)
	// Qwen-Image: no engine reads a W4A16 branch.
	qb := loraCheckpoint(t, "qwen-image")
	const D = 128
	qmod := lora.Factors{Module: "transformer_blocks.0.img_mod.1", Rank: 2, N: 6 * D, K: D, A: make([]float32, 2*D), B: make([]float32, 12*D), Alpha: 2}
	qmod.A[0], qmod.B[0] = 1, 1
	ql := writeLoRA(t, dir, "q.safetensors", []lora.Factors{qmod}, lora.WriteOptions{Style: lora.StylePEFT})
	_, err = FuseLoRA(FuseOptions{Model: qb.q, Out: out, LoRAs: []LoRASpec{{Path: ql, Strength: 1}}})
	if err == nil || !strings.Contains(err.Error(), "img_mod.1") || !strings.Contains(err.Error(), "no engine that runs this family reads one") {
		t.Errorf("auto on Qwen-Image: %v", err)
	}
	absentFile(t, out)
	var warned []string
	fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 1}}, W4A16: W4A16Branch,
		OnWarn: func(s string) { warned = append(warned, s) }})
	if len(warned) != 1 || !strings.Contains(warned[0], "nunchaku-python") || !strings.Contains(warned[0], "--w4a16 branch") {
		t.Errorf("branch warnings %q", warned)
	}
	if p := fixedFreeVerdicts(t, out); len(p[engine.CPP]) != 0 || len(p[engine.ComfyUI]) != 0 || len(p[engine.Python]) == 0 {
		t.Errorf("verdicts with a W4A16 branch: %q", p)
	}

	c := loraCheckpoint(t, "flux-f16-cpp")
	in := fixedFreeVerdicts(t, c.q)
	if len(in[engine.CPP]) != 0 || len(in[engine.Python]) == 0 {
		t.Fatalf("F16 C++ file verdicts %q", in)
	}
	out2 := filepath.Join(dir, "out2.safetensors")
	warned = nil
	rep := fuse(t, FuseOptions{Model: c.q, Out: out2, LoRAs: []LoRASpec{{Path: lp, Strength: 1}}, W4A16: W4A16Auto,
		OnWarn: func(s string) { warned = append(warned, s) }})
	n := 0
	for _, l := range rep.Layers {
		if l.Kind == "w4a16" && l.Rank > 0 {
			n++
		}
	}
	if n != 2 || len(warned) != 0 {
		t.Errorf("%d W4A16 branches written, warnings %q", n, warned)
	}
	for e, p := range fixedFreeVerdicts(t, out2) {
		if (len(p) == 0) != (len(in[e]) == 0) {
			t.Errorf("%s: input %q, output %q", e, in[e], p)
		}
	}
}

// TestFuseSafetyNet: the last check before writing refuses an output that
// would not load where the input does, naming the engine and why.
func TestFuseSafetyNet(t *testing.T) {
	b := loraCheckpoint(t, "qwen-image")
	f, err := openQuantized(b.q)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fu := &fusion{opt: FuseOptions{Model: b.q, W4A16: W4A16Auto}, f: f, rep: &FuseReport{}}
	in := engineFile(f.r)
	fu.inLoads = loadsIn(loraContracts(f.meta, in), in)
	if contractEngines(fu.inLoads) != "nunchaku-python, comfyui" {
		t.Fatalf("the input loads in %q", contractEngines(fu.inLoads))
	}
	var specs []safetensors.Spec
	for _, n := range f.r.Names() {
		i, _ := f.r.Info(n)
		specs = append(specs, i.Spec())
	}
	md := f.r.Metadata()
	if err := fu.checkEngines(specs, md); err != nil {
		t.Fatalf("the input itself: %v", err)
	}
	wide := map[string]string{}
	for k, v := range md {
		wide[k] = v
	}
	wide[nunchaku.MetaQuantizationConfig] = nunchaku.QuantizationConfig(quant.INT4, 48)
	err = fu.checkEngines(specs, wide)
	if err == nil || !strings.Contains(err.Error(), "nunchaku-python") || !strings.Contains(err.Error(), "quantization_config rank 48") {
		t.Errorf("rank 48 in quantization_config: %v", err)
	}
	reserved := append(specs[:len(specs):len(specs)], safetensors.Spec{Name: lora.ReservedBase("img_in.weight"), DType: safetensors.BF16, Shape: []int64{128, 64}})
	err = fu.checkEngines(reserved, md)
	if err == nil || !strings.Contains(err.Error(), "svdq_lora.") || !strings.Contains(err.Error(), "comfyui") {
		t.Errorf("reserved tensor in the file: %v", err)
	}
}

// writeV1 rewrites the fused file v2 (this svdq's) as svdq wrote fused
// files before the sidecar (provenance version 1) to v1: each W4A4 layer
// stored at its own rank rounded up to 16, the svdq entry's r its logical
// rank, the base's quantization_config, and the kept tensors' bases and
// factors in the file's own table.
func writeV1(t *testing.T, v2, v1 string) {
	t.Helper()
	f, err := openQuantized(v2)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	md := f.r.Metadata()
	prov, err := lora.ParseProvenance(md[lora.MetaKey])
	if err != nil {
		t.Fatal(err)
	}
	width := map[string]int{}
	for i := range f.meta.Layers {
		lm := &f.meta.Layers[i]
		if lm.Kind != nunchaku.KindW4A4 {
			continue
		}
		if _, ok := prov.Layers[lm.Name]; ok {
			lm.R = prov.Rank(lm.Name)
		} else if r, ok := prov.Widened[lm.Name]; ok {
			lm.R = r
		}
		width[lm.Name+".lora_down"], width[lm.Name+".lora_up"] = lora.PadRank(lm.R), lora.PadRank(lm.R)
	}
	var ts []safetensors.Tensor
	byName := map[string]nunchaku.Tensor{}
	for _, n := range f.r.Names() {
		x := f.rawTensor(t, n)
		if w, ok := width[n]; ok && int(x.Shape[1]) != w {
			if x, err = lora.NarrowRank(x, w); err != nil {
				t.Fatal(err)
			}
		}
		byName[n] = x
		ts = append(ts, safetensors.Tensor{Spec: safetensors.Spec{Name: n, DType: safetensors.DType(x.DType), Shape: x.Shape}, Data: x.Data})
	}
	side, err := openQuantized(v2 + lora.SidecarSuffix)
	if err != nil {
		t.Fatal(err)
	}
	defer side.Close()
	for _, n := range side.r.Names() {
		x := side.rawTensor(t, n)
		ts = append(ts, safetensors.Tensor{Spec: safetensors.Spec{Name: n, DType: safetensors.DType(x.DType), Shape: x.Shape}, Data: x.Data})
	}
	for i := range f.meta.Layers {
		lm := &f.meta.Layers[i]
		if lm.SHA256 != "" {
			lm.SHA256 = nunchaku.LayerHash(func(suffix string) (string, []int64, []byte, bool) {
				x, ok := byName[lm.Name+"."+suffix]
				return x.DType, x.Shape, x.Data, ok
			})
		}
	}
	if md[nunchaku.MetaSVDQ], err = f.meta.Marshal(); err != nil {
		t.Fatal(err)
	}
	if q := prov.Base.QuantizationConfig; q != nil {
		md[nunchaku.MetaQuantizationConfig] = *q
	}
	prov.Version, prov.Sidecar, prov.Widened, prov.Base.QuantizationConfig = 1, nil, nil, nil
	if md[lora.MetaKey], err = prov.Marshal(); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.WriteFile(v1, ts, md); err != nil {
		t.Fatal(err)
	}
}

// TestFuseVersion1: a file fused by svdq before the sidecar (kept
// tensors' bases and factors in its own table, ranks per layer) is still
// read: --remove-all gives the base bytes back, and removing one of its
// two LoRAs gives the bytes (and sidecar) of fusing the other alone.
func TestFuseVersion1(t *testing.T) {
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux")
	mods := fluxModules(rand.New(rand.NewPCG(51, 51)), 3)
	a := writeLoRA(t, dir, "a.safetensors", append(mods[0:6:6], mods[12]), lora.WriteOptions{Style: lora.StylePEFT})
	c := writeLoRA(t, dir, "c.safetensors", append(mods[6:12:12], mods[13]), lora.WriteOptions{Style: lora.StylePEFT})
	at := func(name string) string {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(d, "fused.safetensors")
	}
	fuse(t, FuseOptions{Model: b.q, Out: at("ac"), LoRAs: []LoRASpec{{Path: a, Strength: 1}, {Path: c, Strength: 0.5}}})
	v1 := filepath.Join(dir, "v1.safetensors")
	writeV1(t, at("ac"), v1)
	if p := fixedFreeVerdicts(t, v1); len(p[engine.Python]) == 0 {
		t.Fatalf("the version-1 file loads in nunchaku-python: its svdq_lora.* tensors are unexpected keys")
	}
	if rep := fuse(t, FuseOptions{Model: v1, Out: at("none"), RemoveAll: true}); !rep.Restored {
		t.Error("version 1: --remove-all did not restore the base")
	}
	if !bytes.Equal(fileBytes(t, at("none")), fileBytes(t, b.q)) {
		t.Fatal("version 1: --remove-all does not give the base bytes")
	}
	fuse(t, FuseOptions{Model: b.q, Out: at("a"), LoRAs: []LoRASpec{{Path: a, Strength: 1}}})
	fuse(t, FuseOptions{Model: v1, Out: at("v1-c"), Remove: []string{"c"}})
	sameFused(t, at("a"), at("v1-c"))
}

// TestFuseSidecarPaths: an output whose sidecar path is an input (the
// model, the model's sidecar, a LoRA; through a symbolic or hard link),
// or whose own path is a LoRA, is refused before anything is written; a
// fused file and its sidecar renamed together are still read; a sidecar
// that changed is refused; a sidecar an earlier run left at the output's
// sidecar path is removed when the output needs none, unless it is not a
// fuse-lora sidecar.
func TestFuseSidecarPaths(t *testing.T) {
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux")
	lp := writeLoRA(t, dir, "l.safetensors", fluxModules(rand.New(rand.NewPCG(61, 61)), 2), lora.WriteOptions{Style: lora.StylePEFT})
	specs := []LoRASpec{{Path: lp, Strength: 1}}
	baseSum := hashOf(t, b.q)
	refuse := func(what string, opt FuseOptions, want string) {
		t.Helper()
		_, err := FuseLoRA(opt)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v (want %q)", what, err, want)
		}
		absentFile(t, opt.Out)
	}
	o := filepath.Join(dir, "o.safetensors")
	if err := os.Symlink(b.q, o+lora.SidecarSuffix); err != nil {
		t.Fatal(err)
	}
	refuse("sidecar is the model", FuseOptions{Model: b.q, Out: o, LoRAs: specs, W4A16: W4A16Branch}, "would overwrite the input "+b.q)
	p := filepath.Join(dir, "p.safetensors")
	if err := os.Link(lp, p+lora.SidecarSuffix); err != nil {
		t.Fatal(err)
	}
	refuse("sidecar is the LoRA", FuseOptions{Model: b.q, Out: p, LoRAs: specs, W4A16: W4A16Branch}, "would overwrite the input "+lp)
	l2 := filepath.Join(dir, "l2.safetensors")
	if err := os.Symlink(lp, l2); err != nil {
		t.Fatal(err)
	}
	_, err := FuseLoRA(FuseOptions{Model: b.q, Out: l2, LoRAs: specs, W4A16: W4A16Branch})
	if err == nil || !strings.Contains(err.Error(), "overwrite the LoRA file") {
		t.Errorf("output is the LoRA: %v", err)
	}
	if hashOf(t, b.q) != baseSum || !bytes.Equal(fileBytes(t, l2), fileBytes(t, lp)) {
		t.Fatal("an input changed")
	}

	// Renamed together.
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(sub, "f.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: f, LoRAs: specs})
	g := filepath.Join(sub, "g.safetensors")
	for _, s := range []string{"", lora.SidecarSuffix} {
		if err := os.Rename(f+s, g+s); err != nil {
			t.Fatal(err)
		}
	}
	h := filepath.Join(dir, "h.safetensors")
	if err := os.Link(g+lora.SidecarSuffix, h+lora.SidecarSuffix); err != nil {
		t.Fatal(err)
	}
	refuse("sidecar is the input's sidecar", FuseOptions{Model: g, Out: h, RemoveAll: true}, "would overwrite the input "+g+lora.SidecarSuffix)

	// A stale sidecar at the output's path is removed; a foreign file
	// there is left with a warning.
	y := filepath.Join(dir, "y.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: y, LoRAs: specs})
	if rep := fuse(t, FuseOptions{Model: g, Out: y, RemoveAll: true}); !rep.Restored {
		t.Error("renamed pair: not restored")
	}
	absentFile(t, y+lora.SidecarSuffix)
	z := filepath.Join(dir, "z.safetensors")
	if err := os.WriteFile(z+lora.SidecarSuffix, fileBytes(t, lp), 0o644); err != nil {
		t.Fatal(err)
	}
	var warned []string
	fuse(t, FuseOptions{Model: g, Out: z, RemoveAll: true, OnWarn: func(s string) { warned = append(warned, s) }})
	if _, err := os.Stat(z + lora.SidecarSuffix); err != nil || len(warned) != 1 || !strings.Contains(warned[0], "not a fuse-lora sidecar") {
		t.Errorf("foreign file at the sidecar path: %v, warnings %q", err, warned)
	}

	// A changed sidecar.
	side := g + lora.SidecarSuffix
	data := fileBytes(t, side)
	data[len(data)-1] ^= 1
	if err := os.WriteFile(side, data, 0o644); err != nil {
		t.Fatal(err)
	}
	refuse("changed sidecar", FuseOptions{Model: g, Out: filepath.Join(dir, "w.safetensors"), RemoveAll: true}, "not this file's sidecar")
}

// TestFuseQuantConfig: the output's quantization_config records the one
// rank, keeps the precision (and any other key), and the record keeps the
// base's (or its absence) until the rank is the base's again.
func TestFuseQuantConfig(t *testing.T) {
	const key = nunchaku.MetaQuantizationConfig
	fu := &fusion{opt: FuseOptions{Model: "m"}, f: &qfile{meta: &nunchaku.Meta{Precision: "nvfp4"}},
		prov: &lora.Provenance{LoRAs: []lora.Applied{{Name: "a"}}}}
	step := func(md map[string]string, rank int, want string, wantRecord *string) map[string]string {
		t.Helper()
		if err := fu.quantConfig(md, rank); err != nil {
			t.Fatal(err)
		}
		got, ok := md[key]
		if (want == "" && ok) || (want != "" && got != want) {
			t.Errorf("rank %d: quantization_config %q (present %v), want %q", rank, got, ok, want)
		}
		if rec := fu.prov.Base.QuantizationConfig; (rec == nil) != (wantRecord == nil) || rec != nil && *rec != *wantRecord {
			t.Errorf("rank %d: record %v, want %v", rank, rec, wantRecord)
		}
		return md
	}
	base := nunchaku.QuantizationConfig(quant.INT4, 16)
	md := step(map[string]string{key: base}, 48, nunchaku.QuantizationConfig(quant.INT4, 48), &base)
	md = step(md, 16, base, nil)
	md = step(md, 32, nunchaku.QuantizationConfig(quant.INT4, 32), &base)
	fu.prov.LoRAs = nil
	step(md, 0, base, nil)

	fu.prov.LoRAs = []lora.Applied{{Name: "a"}}
	other := `{"method": "svdquant", "weight": {"dtype": "int4"}, "rank": 32, "skip_refiners": true}`
	step(map[string]string{key: other}, 48, `{"method":"svdquant","rank":48,"skip_refiners":true,"weight":{"dtype":"int4"}}`, &other)

	none := ""
	fu.prov.Base.QuantizationConfig = nil
	md = step(map[string]string{}, 48, nunchaku.QuantizationConfig(quant.NVFP4, 48), &none)
	md = step(md, 32, "", nil)
	md = step(md, 64, nunchaku.QuantizationConfig(quant.NVFP4, 64), &none)
	fu.prov.LoRAs = nil
	step(md, 0, "", nil)
}
