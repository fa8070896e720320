package preset

import (
	"encoding/json"
	"reflect"
	"testing"
)

func fluxPlan(t *testing.T, family, naming string, scale float64, blocks int) *Plan {
	t.Helper()
	specs, err := Skeleton(family, SkeletonOptions{Scale: scale, Blocks: blocks, Naming: naming})
	if err != nil {
		t.Fatal(err)
	}
	tab := SkeletonTable(specs)
	f, err := Detect(tab)
	if err != nil {
		t.Fatalf("%s/%s: %v", family, naming, err)
	}
	if f.Name() != family {
		t.Fatalf("%s/%s: detected %s", family, naming, f.Name())
	}
	p, err := f.Plan(tab, Options{})
	if err != nil {
		t.Fatalf("%s/%s: %v", family, naming, err)
	}
	return p
}

// TestFluxLayers checks names, shapes, roles and groups of a narrow,
// shallow FLUX (width 768, 2 double and 4 single blocks).
func TestFluxLayers(t *testing.T) {
	p := fluxPlan(t, "flux-dev", "diffusers", 0.25, 2)
	const D, H = 768, 3072
	if len(p.Layers) != 2*10+4*5 {
		t.Fatalf("%d layers, want %d", len(p.Layers), 2*10+4*5)
	}
	want := []struct {
		name    string
		role    Role
		n, k    int
		shifted bool
		group   string
		chunks  int
		sources int
	}{
		{"transformer_blocks.1.norm1.linear", W4A16, 6 * D, D, false, "", 6, 1},
		{"transformer_blocks.1.qkv_proj", W4A4, 3 * D, D, false, "", 0, 3},
		{"transformer_blocks.1.qkv_proj_context", W4A4, 3 * D, D, false, "", 0, 3},
		{"transformer_blocks.1.out_proj", W4A4, D, D, false, "", 0, 1},
		{"transformer_blocks.1.out_proj_context", W4A4, D, D, false, "", 0, 1},
		{"transformer_blocks.1.mlp_fc1", W4A4, H, D, false, "", 0, 1},
		{"transformer_blocks.1.mlp_fc2", W4A4, D, H, true, "", 0, 1},
		{"transformer_blocks.1.mlp_context_fc2", W4A4, D, H, true, "", 0, 1},
		{"single_transformer_blocks.3.norm.linear", W4A16, 3 * D, D, false, "", 3, 1},
		{"single_transformer_blocks.3.qkv_proj", W4A4, 3 * D, D, false, "single_transformer_blocks.3.qkv_mlp_input", 0, 3},
		{"single_transformer_blocks.3.mlp_fc1", W4A4, H, D, false, "single_transformer_blocks.3.qkv_mlp_input", 0, 1},
		{"single_transformer_blocks.3.out_proj", W4A4, D, D, false, "", 0, 1},
		{"single_transformer_blocks.3.mlp_fc2", W4A4, D, H, true, "", 0, 1},
	}
	for _, w := range want {
		l, ok := p.Layer(w.name)
		if !ok {
			t.Errorf("no layer %s", w.name)
			continue
		}
		if l.Role != w.role || l.N != w.n || l.K != w.k || l.Shifted != w.shifted || l.SmoothGroup != w.group ||
			l.Chunks != w.chunks || len(l.Sources) != w.sources {
			t.Errorf("%s: role %v N %d K %d shifted %v group %q chunks %d sources %d; want %+v",
				w.name, l.Role, l.N, l.K, l.Shifted, l.SmoothGroup, l.Chunks, len(l.Sources), w)
		}
	}
	// proj_out split: out_proj columns [0, D) without bias, mlp_fc2 [D, D+H) with it.
	op, _ := p.Layer("single_transformer_blocks.0.out_proj")
	fc2, _ := p.Layer("single_transformer_blocks.0.mlp_fc2")
	if s := op.Sources[0]; s.Cols != (Range{0, D}) || s.Bias != "" || s.Tensor != "single_transformer_blocks.0.proj_out.weight" {
		t.Errorf("out_proj source %+v", s)
	}
	if s := fc2.Sources[0]; s.Cols != (Range{D, D + H}) || s.Bias != "single_transformer_blocks.0.proj_out.bias" {
		t.Errorf("mlp_fc2 source %+v", s)
	}
	if fc2.CalibCols != (Range{D, D + H}) || fc2.Calib[0] != "single_transformer_blocks.0.proj_out" ||
		fc2.Calib[1] != "single_blocks.0.linear2" {
		t.Errorf("mlp_fc2 calib %v %v", fc2.Calib, fc2.CalibCols)
	}
	qkv, _ := p.Layer("transformer_blocks.0.qkv_proj")
	wantCalib := []string{"transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v", "double_blocks.0.img_attn.qkv"}
	if !reflect.DeepEqual(qkv.Calib, wantCalib) {
		t.Errorf("qkv calib %v, want %v", qkv.Calib, wantCalib)
	}
	for i, s := range qkv.Sources {
		if s.Rows != (Range{i * D, (i + 1) * D}) || s.Bias == "" {
			t.Errorf("qkv source %d: %+v", i, s)
		}
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(p.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["num_layers"] != 2.0 || cfg["num_single_layers"] != 4.0 || cfg["num_attention_heads"] != 6.0 ||
		cfg["guidance_embeds"] != true || cfg["joint_attention_dim"] != 4096.0 {
		t.Errorf("config %s", p.Config)
	}
	if p.ModelClass != "NunchakuFluxTransformer2dModel" {
		t.Errorf("model class %s", p.ModelClass)
	}
}

// TestFluxNamings checks that BFL and ComfyUI files give the same output
// layers (names, shapes, roles) and kept tensors as the diffusers file.
func TestFluxNamings(t *testing.T) {
	for _, fam := range []string{"flux-dev", "flux-schnell"} {
		ref := fluxPlan(t, fam, "diffusers", 0.25, 2)
		for _, naming := range []string{"bfl", "comfyui"} {
			p := fluxPlan(t, fam, naming, 0.25, 2)
			if len(p.Layers) != len(ref.Layers) {
				t.Fatalf("%s %s: %d layers, diffusers %d", fam, naming, len(p.Layers), len(ref.Layers))
			}
			for i, l := range p.Layers {
				r := ref.Layers[i]
				if l.Name != r.Name || l.N != r.N || l.K != r.K || l.Role != r.Role || l.Shifted != r.Shifted ||
					l.SmoothGroup != r.SmoothGroup || l.Chunks != r.Chunks || l.CalibCols != r.CalibCols ||
					!reflect.DeepEqual(l.Calib, r.Calib) {
					t.Errorf("%s %s: layer %+v\ndiffusers %+v", fam, naming, l, r)
				}
			}
			if len(p.Kept) != len(ref.Kept) {
				t.Fatalf("%s %s: %d kept, diffusers %d", fam, naming, len(p.Kept), len(ref.Kept))
			}
			for i, k := range p.Kept {
				if k.Name != ref.Kept[i].Name || !reflect.DeepEqual(k.Shape, ref.Kept[i].Shape) || k.Reason != ref.Kept[i].Reason {
					t.Errorf("%s %s: kept %+v, diffusers %+v", fam, naming, k, ref.Kept[i])
				}
			}
			if p.Config != ref.Config {
				t.Errorf("%s %s: config %s, diffusers %s", fam, naming, p.Config, ref.Config)
			}
		}
	}
}

// TestFluxBFLSources checks the fused BFL sources: one qkv source, linear1
// split by rows with its bias, linear2 split by columns, the swapped
// final modulation.
func TestFluxBFLSources(t *testing.T) {
	p := fluxPlan(t, "flux-schnell", "comfyui", 0.25, 1)
	const D, H = 768, 3072
	const pre = "model.diffusion_model."
	qkv, _ := p.Layer("transformer_blocks.0.qkv_proj")
	if len(qkv.Sources) != 1 || qkv.Sources[0] != (Source{Tensor: pre + "double_blocks.0.img_attn.qkv.weight",
		Bias: pre + "double_blocks.0.img_attn.qkv.bias", Module: "double_blocks.0.img_attn.qkv",
		SrcRows: Range{0, 3 * D}, Cols: Range{0, D}, Rows: Range{0, 3 * D}}) {
		t.Errorf("qkv sources %+v", qkv.Sources)
	}
	fc1, _ := p.Layer("single_transformer_blocks.1.mlp_fc1")
	if s := fc1.Sources[0]; s.Tensor != pre+"single_blocks.1.linear1.weight" || s.SrcRows != (Range{3 * D, 3*D + H}) ||
		s.Rows != (Range{0, H}) || s.Bias != pre+"single_blocks.1.linear1.bias" {
		t.Errorf("single mlp_fc1 source %+v", s)
	}
	var norm *Kept
	for i := range p.Kept {
		if p.Kept[i].Name == "norm_out.linear.weight" {
			norm = &p.Kept[i]
		}
	}
	if norm == nil || norm.Transform != "swap-halves" || len(norm.Pieces) != 2 ||
		norm.Pieces[0].Rows != (Range{D, 2 * D}) || norm.Pieces[1].SrcRows != (Range{D, 2 * D}) {
		t.Fatalf("norm_out.linear %+v", norm)
	}
	if p.Prefix != pre || p.Naming != "comfyui" {
		t.Errorf("naming %q prefix %q", p.Naming, p.Prefix)
	}
}

// TestFluxDetect: guidance embedder tells dev from schnell; a plan for the
// wrong variant fails.
func TestFluxDetect(t *testing.T) {
	for _, naming := range []string{"diffusers", "bfl", "comfyui"} {
		for _, fam := range []string{"flux-dev", "flux-schnell"} {
			fluxPlan(t, fam, naming, 0.125, 1)
		}
		specs, _ := Skeleton("flux-dev", SkeletonOptions{Scale: 0.125, Blocks: 1, Naming: naming})
		other, _ := Lookup("flux-schnell")
		if _, err := other.Plan(SkeletonTable(specs), Options{}); err == nil {
			t.Errorf("%s: flux-schnell planned a dev checkpoint", naming)
		}
	}
}

func TestFluxFullSize(t *testing.T) {
	p := fluxPlan(t, "flux-dev", "bfl", 1, 0)
	if len(p.Layers) != 19*10+38*5 {
		t.Fatalf("%d layers", len(p.Layers))
	}
	l, _ := p.Layer("single_transformer_blocks.37.mlp_fc2")
	if l.N != 3072 || l.K != 12288 || l.CalibCols != (Range{3072, 15360}) {
		t.Errorf("%+v", l)
	}
}

// TestFluxConfigInChannels: FLUX.1-dev's config widened to 128 input
// channels is the config Plan writes for a FLUX.1-Canny-dev checkpoint
// (x_embedder [3072, 128], proj_out [64, 3072]: in 128, out 64, as
// ComfyUI-nunchaku dbfd194 nodes/models/configs/flux.1-canny-dev.json's
// 32 and 16 latent channels before 2×2 patching), and narrowing
// it back gives dev's (out_channels null); bad configs are errors.
func TestFluxConfigInChannels(t *testing.T) {
	dev := `{"_class_name":"FluxTransformer2DModel","attention_head_dim":128,"axes_dims_rope":[16,56,56],"guidance_embeds":true,"in_channels":64,"joint_attention_dim":4096,"num_attention_heads":24,"num_layers":19,"num_single_layers":38,"out_channels":null,"patch_size":1,"pooled_projection_dim":768}`
	canny := `{"_class_name":"FluxTransformer2DModel","attention_head_dim":128,"axes_dims_rope":[16,56,56],"guidance_embeds":true,"in_channels":128,"joint_attention_dim":4096,"num_attention_heads":24,"num_layers":19,"num_single_layers":38,"out_channels":64,"patch_size":1,"pooled_projection_dim":768}`
	got, err := FluxConfigInChannels(dev, 128)
	if err != nil || got != canny {
		t.Errorf("widened:\n got  %s (%v)\n want %s", got, err, canny)
	}
	if got, err := FluxConfigInChannels(canny, 64); err != nil || got != dev {
		t.Errorf("narrowed:\n got  %s (%v)\n want %s", got, err, dev)
	}
	for _, bad := range []string{`[]`, `{"in_channels":"64"}`, `{"in_channels":64.5}`, `{"in_channels":64,"out_channels":-4}`, `{`} {
		if _, err := FluxConfigInChannels(bad, 128); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
