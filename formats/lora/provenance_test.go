package lora

import (
	"reflect"
	"strings"
	"testing"
)

func sampleProvenance() *Provenance {
	qc, cfg := `{"rank": 16}`, `{"in_channels":64}`
	return &Provenance{Version: ProvenanceVersion, Base: Base{SHA256: "ab", HeaderPad: 3, QuantizationConfig: &qc,
		Input: &BaseInput{Layer: "x.weight", Width: 64, Config: &cfg}},
		Widened: map[string]int{"o": 16},
		Sidecar: &Sidecar{File: "f.safetensors.lora-base", SHA256: strings.Repeat("0a", 32)},
		Layers:  map[string]Layer{"q": {Kind: "w4a4", Base: 32}, "m": {Kind: "w4a16"}, "x.weight": {Kind: "kept"}},
		LoRAs: []Applied{
			{Name: "a", File: "a.safetensors", SHA256: "01", Strength: 1, Format: "kohya",
				Ranges: map[string][2]int{"q": {32, 40}, "m": {0, 4}}},
			{Name: "b", File: "b.safetensors", SHA256: "02", Strength: -0.5, Format: "peft",
				Ranges: map[string][2]int{"q": {40, 56}, "x.weight": {0, 16}}, Input: 128},
			{Name: "c", File: "c.safetensors", SHA256: "03", Strength: 2, Format: "peft",
				Ranges: map[string][2]int{"q": {56, 60}, "m": {4, 6}}},
		}}
}

func TestProvenanceRoundTrip(t *testing.T) {
	p := sampleProvenance()
	s, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ParseProvenance(s)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p, q) {
		t.Fatalf("round trip: %+v", q)
	}
	s2, _ := q.Marshal()
	if s != s2 {
		t.Fatal("marshal is not deterministic")
	}
	if p.Rank("q") != 60 || p.Rank("m") != 6 || p.Rank("x.weight") != 16 {
		t.Errorf("ranks %d %d %d", p.Rank("q"), p.Rank("m"), p.Rank("x.weight"))
	}
	if got := p.Summary(); len(got) != 3 || !strings.Contains(got[1], "b  strength -0.5  peft  b.safetensors") || !strings.Contains(got[1], "rank +32") {
		t.Errorf("summary %q", got)
	}
}

// TestProvenanceRemove: removing the middle LoRA shifts the later ranges
// and drops layers left without a LoRA.
func TestProvenanceRemove(t *testing.T) {
	p := sampleProvenance()
	gone := p.Remove(p.Find("b"))
	if gone.Name != "b" || len(p.LoRAs) != 2 {
		t.Fatalf("removed %q, %d left", gone.Name, len(p.LoRAs))
	}
	if r := p.LoRAs[1].Ranges["q"]; r != [2]int{40, 44} {
		t.Errorf("c's q range %v, want [40 44]", r)
	}
	if _, ok := p.Layers["x.weight"]; ok {
		t.Error("x.weight still listed")
	}
	if err := p.Validate(); err != nil {
		t.Error(err)
	}
	p.Remove(0)
	p.Remove(0)
	if len(p.Layers) != 0 || p.Validate() != nil {
		t.Errorf("empty record: %+v %v", p, p.Validate())
	}
}

// TestProvenanceV1: a record of the version before the sidecar still
// parses.
func TestProvenanceV1(t *testing.T) {
	p := sampleProvenance()
	p.Version, p.Sidecar, p.Widened, p.Base.QuantizationConfig, p.Base.Input, p.LoRAs[1].Input = 1, nil, nil, nil, nil, 0
	s, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if q, err := ParseProvenance(s); err != nil || !reflect.DeepEqual(p, q) {
		t.Fatalf("version 1: %v %+v", err, q)
	}
}

func TestProvenanceInvalid(t *testing.T) {
	cases := map[string]func(p *Provenance){
		"version":          func(p *Provenance) { p.Version = 3 },
		"v1 fields":        func(p *Provenance) { p.Version = 1 },
		"side path":        func(p *Provenance) { p.Sidecar.File = "../x.lora-base" },
		"side hash":        func(p *Provenance) { p.Sidecar.SHA256 = "0a" },
		"widened":          func(p *Provenance) { p.Widened["q"] = 32 },
		"wide neg":         func(p *Provenance) { p.Widened["o"] = -1 },
		"dup name":         func(p *Provenance) { p.LoRAs[1].Name = "a" },
		"gap":              func(p *Provenance) { p.LoRAs[1].Ranges["q"] = [2]int{41, 56} },
		"empty":            func(p *Provenance) { p.LoRAs[1].Ranges["q"] = [2]int{40, 40} },
		"unlisted":         func(p *Provenance) { p.LoRAs[0].Ranges["z"] = [2]int{0, 1} },
		"unused":           func(p *Provenance) { p.Layers["z"] = Layer{Kind: "w4a4"} },
		"kind":             func(p *Provenance) { p.Layers["q"] = Layer{Kind: "w8a8", Base: 32} },
		"kept base":        func(p *Provenance) { p.Layers["x.weight"] = Layer{Kind: "kept", Base: 2} },
		"input unrecorded": func(p *Provenance) { p.Base.Input = nil },
		"input layer":      func(p *Provenance) { p.Base.Input.Layer = "q" },
		"input width":      func(p *Provenance) { p.Base.Input.Width = 0 },
		"input narrower":   func(p *Provenance) { p.LoRAs[1].Input = 64 },
		"input off layer":  func(p *Provenance) { p.LoRAs[0].Input = 128 },
	}
	for name, mutate := range cases {
		p := sampleProvenance()
		mutate(p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, s := range []string{`{"version":1,"base":{"sha256":"","header_pad":0},"layers":{},"loras":[],"x":1}`,
		`{"version":1,"base":{"sha256":"","header_pad":0},"layers":{},"loras":[]} {}`, `[]`} {
		if _, err := ParseProvenance(s); err == nil {
			t.Errorf("%s: accepted", s)
		}
	}
}

func FuzzParseProvenance(f *testing.F) {
	s, _ := sampleProvenance().Marshal()
	f.Add(s)
	f.Add(`{"version":1,"base":{"sha256":"","header_pad":0},"layers":{},"loras":[]}`)
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseProvenance(s)
		if err != nil {
			return
		}
		out, err := p.Marshal()
		if err != nil {
			t.Fatalf("parsed record does not marshal: %v", err)
		}
		q, err := ParseProvenance(out)
		if err != nil || !reflect.DeepEqual(p, q) {
			t.Fatalf("re-parse: %v", err)
		}
		for i := len(p.LoRAs) - 1; i >= 0; i-- {
			p.Remove(i)
			if err := p.Validate(); err != nil {
				t.Fatalf("after Remove(%d): %v", i, err)
			}
		}
	})
}

// FuzzResolve: any module name resolves or not without panicking, and a
// resolved target lies inside its layer.
func FuzzResolve(f *testing.F) {
	ix := fluxIndex(f, "bfl")
	for _, s := range []string{"lora_unet_double_blocks_0_img_attn_qkv", "transformer.x_embedder", "a.b", "lora_unet_", "..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ts, ok := ix.Resolve(s)
		if !ok {
			return
		}
		for _, tg := range ts {
			li := ix.Layers[tg.Layer]
			if li == nil || tg.Rows.Hi > li.N || tg.Cols.Len() != li.K {
				t.Fatalf("%q: target %+v outside %+v", s, tg, li)
			}
		}
	})
}
