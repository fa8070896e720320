package preset

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

func keptByName(p *Plan, name string) *Kept {
	for i := range p.Kept {
		if p.Kept[i].Name == name {
			return &p.Kept[i]
		}
	}
	return nil
}

// TestSanaPadding: at the real 1600M width (2240, not a multiple of 128)
// q, k and v each take dim_pad = 2304 rows, the GLU halves of the hidden
// 5600 take 5632, and the depthwise conv is padded alike.
func TestSanaPadding(t *testing.T) {
	_, p := planCase(t, familyCase{"sana", "", 1, 2})
	const D, Dpad, H, Hpad = 2240, 2304, 5600, 5632
	qkv, ok := p.Layer("transformer_blocks.1.attn.qkv_proj")
	if !ok || qkv.N != 3*Dpad || qkv.K != D || len(qkv.Sources) != 3 {
		t.Fatalf("qkv_proj %+v", qkv)
	}
	for i, s := range qkv.Sources {
		if s.Rows != (Range{i * Dpad, i*Dpad + D}) || s.Bias != "" {
			t.Errorf("qkv source %d %+v", i, s)
		}
	}
	inv, _ := p.Layer("transformer_blocks.0.ff.inverted_conv")
	if inv.N != 2*Hpad || !inv.Conv1x1 || len(inv.Sources) != 2 || inv.Sources[1].SrcRows != (Range{H, 2 * H}) ||
		inv.Sources[1].Rows != (Range{Hpad, Hpad + H}) || inv.Sources[1].Bias == "" {
		t.Errorf("inverted_conv %+v", inv)
	}
	pc, _ := p.Layer("transformer_blocks.0.ff.point_conv")
	if pc.N != D || pc.K != H || pc.Shifted {
		t.Errorf("point_conv %+v", pc)
	}
	dw := keptByName(p, "transformer_blocks.0.ff.depth_conv.weight")
	if dw == nil || dw.Transform != "pad" || fmt.Sprint(dw.Shape) != fmt.Sprint([]int64{2 * Hpad, 3, 3, 1}) {
		t.Errorf("depth_conv %+v", dw)
	}
	kv := keptByName(p, "transformer_blocks.0.cross_attn.kv_linear.weight")
	if kv == nil || kv.Transform != "concat" || kv.Reason != "cross-attention K/V (text side)" || kv.Shape[0] != 2*D {
		t.Errorf("kv_linear %+v", kv)
	}
	ts, ok := p.Resolve("transformer_blocks.0.attn2.to_v")
	if !ok || len(ts) != 1 || !ts[0].Kept || ts[0].Rows != (Range{D, 2 * D}) {
		t.Errorf("Resolve attn2.to_v = %+v", ts)
	}
	// At a width that is a multiple of 128 nothing is padded.
	_, p = planCase(t, familyCase{"sana", "", 0.25, 1})
	if dw := keptByName(p, "transformer_blocks.0.ff.depth_conv.weight"); dw.Transform != "reshape" {
		t.Errorf("unpadded depth_conv %+v", dw)
	}
}

// TestCrossAttentionKV: the text-side K/V stay 16-bit where the spec (and
// nunchaku's SDXL) says so.
func TestCrossAttentionKV(t *testing.T) {
	for _, c := range []struct{ family, name string }{
		{"pixart-sigma", "transformer_blocks.1.attn2.to_k.weight"},
		{"sdxl", "mid_block.attentions.0.transformer_blocks.1.attn2.to_v.weight"},
		{"lumina-next", "layers.0.attn2.to_k.weight"},
	} {
		_, p := planCase(t, familyCase{c.family, "", 0.125, 2})
		if k := keptByName(p, c.name); k == nil || k.Reason != "cross-attention K/V (text side)" {
			t.Errorf("%s: %s kept as %+v", c.family, c.name, k)
		}
	}
}

func TestLayerCounts(t *testing.T) {
	for _, c := range []struct {
		family         string
		blocks, layers int
	}{
		{"pixart-sigma", 3, 3 * 8},
		{"qwen-image", 2, 2 * 10},
		{"sdxl", 3, (2*2 + 3*2 + (2+1+3)*3) * 6}, // 640: 2+3 attention modules of min(2,3); 1280: 2+1+3 of 3
		{"lumina-next", 2, 2 * 9},
		{"hart", 2, 2*6 + 6*3},
		{"llama", 2, 2 * 7},
		{"dc-ae", 1, 6 * 6}, // three EfficientViT stages, encoder and decoder, one block each
	} {
		_, p := planCase(t, familyCase{c.family, "", 0.125, c.blocks})
		if len(p.Layers) != c.layers {
			t.Errorf("%s with %d blocks: %d layers, want %d", c.family, c.blocks, len(p.Layers), c.layers)
		}
	}
}

// TestDiffusersPrefix: a diffusers single file with the "transformer."
// prefix plans to the same output as the bare names.
func TestDiffusersPrefix(t *testing.T) {
	specs, _ := Skeleton("flux-schnell", SkeletonOptions{Scale: 0.125, Blocks: 1})
	tab := MapTable{}
	for _, s := range specs {
		tab["transformer."+s.Name] = s.Shape
	}
	f, err := Detect(tab)
	if err != nil || f.Name() != "flux-schnell" {
		t.Fatalf("detect: %v %v", f, err)
	}
	p, err := f.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := fluxPlan(t, "flux-schnell", "diffusers", 0.125, 1)
	if len(p.Layers) != len(ref.Layers) || len(p.Kept) != len(ref.Kept) || p.Prefix != "transformer." {
		t.Fatalf("prefixed plan: %d layers %d kept prefix %q", len(p.Layers), len(p.Kept), p.Prefix)
	}
	for i := range p.Kept {
		if p.Kept[i].Name != ref.Kept[i].Name || p.Kept[i].Tensor != "transformer."+ref.Kept[i].Tensor {
			t.Errorf("kept %+v vs %+v", p.Kept[i], ref.Kept[i])
		}
	}
	if l := p.Layers[0]; l.Sources[0].Module != ref.Layers[0].Sources[0].Module || l.Sources[0].Tensor != "transformer."+ref.Layers[0].Sources[0].Tensor {
		t.Errorf("source %+v vs %+v", l.Sources[0], ref.Layers[0].Sources[0])
	}
}

func TestAssemble(t *testing.T) {
	// A [4, 2] int16 tensor with rows 0..3.
	src := make([]byte, 16)
	for i := range 8 {
		binary.LittleEndian.PutUint16(src[2*i:], uint16(i))
	}
	read := func(name string) ([]byte, []int64, error) {
		if name != "x" {
			return nil, nil, fmt.Errorf("no %s", name)
		}
		return src, []int64{4, 2}, nil
	}
	swap := Kept{Name: "y", Tensor: "x", Transform: "swap-halves", Shape: []int64{4, 2},
		Pieces: []Piece{{"x", Range{0, 2}, Range{2, 4}}, {"x", Range{2, 4}, Range{0, 2}}}}
	got, err := swap.Assemble(read, 2)
	want := append(append([]byte(nil), src[8:]...), src[:8]...)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("swap: %v %v, want %v", got, err, want)
	}
	pad := Kept{Name: "z", Tensor: "x", Transform: "pad", Shape: []int64{6, 2},
		Pieces: []Piece{{"x", Range{0, 2}, Range{0, 2}}, {"x", Range{2, 4}, Range{3, 5}}}}
	got, err = pad.Assemble(read, 2)
	want = bytes.Join([][]byte{src[:8], make([]byte, 4), src[8:], make([]byte, 4)}, nil)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("pad: %v %v, want %v", got, err, want)
	}
	plain := Kept{Name: "x", Tensor: "x"}
	if got, err := plain.Assemble(read, 2); err != nil || !bytes.Equal(got, src) {
		t.Errorf("plain: %v %v", got, err)
	}
	bad := Kept{Name: "w", Tensor: "x", Transform: "pad", Shape: []int64{4, 3}, Pieces: []Piece{{"x", Range{0, 4}, Range{0, 4}}}}
	if _, err := bad.Assemble(read, 2); err == nil {
		t.Error("row width mismatch accepted")
	}
}
