package model

import (
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/quant"
)

// TestPlannedMetaValid: every layer the presets plan, at real widths too
// (SANA 1600M: D = 2240 and h = 5600, whose fused parts are each padded, so
// some rows come from no source), gives svdq metadata that parses back. A
// stricter reading (sources tiling [0, N) without gaps) once made
// `svdq quantize` refuse SANA at its real width after quantizing it.
func TestPlannedMetaValid(t *testing.T) {
	for _, c := range []struct {
		family string
		scale  float64
	}{{"sana", 1}, {"sana", 0.25}, {"flux-dev", 1}, {"pixart-sigma", 1}, {"sdxl", 1}, {"qwen-image", 1}} {
		specs, err := preset.Skeleton(c.family, preset.SkeletonOptions{Scale: c.scale, Blocks: 1})
		if err != nil {
			t.Fatal(err)
		}
		tab := preset.SkeletonTable(specs)
		f, err := preset.Detect(tab)
		if err != nil {
			t.Fatal(err)
		}
		p, err := f.Plan(tab, preset.Options{})
		if err != nil {
			t.Fatal(err)
		}
		plan := &Plan{Precision: quant.INT4, Rank: 32}
		m := &nunchaku.Meta{Version: nunchaku.MetaVersion, Tool: "test", Family: c.family, Precision: "int4", Rank: 32}
		gaps := 0
		for i := range p.Layers {
			l := p.Layers[i]
			m.Layers = append(m.Layers, plan.layerMeta(&PlannedLayer{Layer: l, R: 32, DType: "BF16"}, 0.5, 0.5))
			covered := 0
			for _, s := range l.Sources {
				covered += s.Rows.Hi - s.Rows.Lo
			}
			if covered < l.N {
				gaps++
			}
		}
		s, err := m.Marshal()
		if err == nil {
			_, err = nunchaku.ParseMeta(s)
		}
		if err != nil {
			t.Errorf("%s at scale %g: %v", c.family, c.scale, err)
		}
		if c.family == "sana" && c.scale == 1 && gaps == 0 {
			t.Errorf("sana at its real width planned no padded layer: the test lost its point")
		}
	}
}
