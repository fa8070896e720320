package model

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/quant"
)

// MetaCalib is the safetensors metadata key under which quantize records,
// for every quantized layer, the calibration key and input columns it was
// measured on (CalibRef), so that check finds the rows from the file alone.
// Its value is a JSON object mapping layer names to CalibRef.
const MetaCalib = "svdq_calib"

// CalibRef names the calibration rows of one layer: the svdq-calib/1 module
// Key and the columns [Cols[0], Cols[1]) of its input the layer reads.
type CalibRef struct {
	Key  string `json:"key"`
	Cols [2]int `json:"cols"`
}

// parseCalibRefs reads a MetaCalib value.
func parseCalibRefs(s string) (map[string]CalibRef, error) {
	var m map[string]CalibRef
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("metadata %s: %v", MetaCalib, err)
	}
	return m, nil
}

// layerSeed derives the SVD seed of a unit from its name, so that results do
// not depend on which worker ran it or in what order.
func layerSeed(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

// ratio rounds a smoothing exponent to the metadata's two decimals.
func ratio(x float64) nunchaku.Ratio { return nunchaku.Ratio(math.Round(x*100) / 100) }

// sourceMetas converts a preset layer's sources to metadata entries.
func sourceMetas(l *preset.Layer) []nunchaku.SourceMeta {
	out := make([]nunchaku.SourceMeta, len(l.Sources))
	for i, s := range l.Sources {
		out[i] = nunchaku.SourceMeta{Tensor: s.Tensor, Bias: s.Bias,
			Rows:    nunchaku.Range{s.Rows.Lo, s.Rows.Hi},
			SrcRows: nunchaku.Range{s.SrcRows.Lo, s.SrcRows.Hi},
			SrcCols: nunchaku.Range{s.Cols.Lo, s.Cols.Hi}}
	}
	return out
}

// metaSources converts metadata sources to the loader's form.
func metaSources(ss []nunchaku.SourceMeta) []source {
	out := make([]source, len(ss))
	for i, s := range ss {
		out[i] = source{tensor: s.Tensor, bias: s.Bias, srcRows: s.SrcRows, cols: s.SrcCols, rows: s.Rows}
	}
	return out
}

// presetSources converts a preset layer's sources to the loader's form.
func presetSources(l *preset.Layer) []source {
	out := make([]source, len(l.Sources))
	for i, s := range l.Sources {
		out[i] = source{tensor: s.Tensor, bias: s.Bias, srcRows: [2]int{s.SrcRows.Lo, s.SrcRows.Hi},
			cols: [2]int{s.Cols.Lo, s.Cols.Hi}, rows: [2]int{s.Rows.Lo, s.Rows.Hi}}
	}
	return out
}

// layerMeta returns the svdq entry of planned layer pl; for W4A4 layers
// alpha and beta are the chosen exponents (placeholders before the search:
// Ratio always prints two decimals, so the entry's length is known in
// advance). Its SHA256 is nunchaku.PlaceholderHash, of the same length as
// the real hash the caller sets once the layer is packed.
func (p *Plan) layerMeta(pl *PlannedLayer, alpha, beta float64) nunchaku.LayerMeta {
	lm := nunchaku.LayerMeta{Name: pl.Name, N: pl.N, K: pl.K, DType: p.DType.String(), Sources: sourceMetas(&pl.Layer),
		SHA256: nunchaku.PlaceholderHash}
	switch pl.Role {
	case preset.W4A16:
		lm.Kind, lm.Group, lm.Precision, lm.Chunks = nunchaku.KindW4A16, 64, quant.INT4.String(), max(pl.Chunks, 1)
		return lm
	case preset.W4A16G128:
		lm.Kind, lm.Group, lm.Precision = nunchaku.KindW4A16G128, nunchaku.W4LinearGroup, quant.INT4.String()
		return lm
	}
	lm.Kind, lm.R, lm.Group, lm.Precision = nunchaku.KindW4A4, pl.R, p.Precision.GroupSize(), p.Precision.String()
	lm.Smooth = &nunchaku.Smoothing{Alpha: ratio(alpha), Beta: ratio(beta)}
	lm.Shifted = pl.Shifted && p.Precision == quant.INT4
	return lm
}

// metadata returns the output file's metadata: quantization_config (when
// the plan has W4A4 layers: it describes them, and nunchaku's T5 loader
// reads none), config, model_class (when the preset names one), the svdq
// entry built from metas and the calibration references.
func (p *Plan) metadata(tool string, metas []nunchaku.LayerMeta, refs map[string]CalibRef) (map[string]string, error) {
	m := &nunchaku.Meta{Version: nunchaku.MetaVersion, Tool: tool, Family: p.Family,
		Precision: p.Precision.String(), Rank: p.Rank, Layers: metas}
	svdq, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	cal, err := json.Marshal(refs)
	if err != nil {
		return nil, err
	}
	out := map[string]string{
		nunchaku.MetaSVDQ: svdq,
		MetaCalib:         string(cal),
	}
	if p.HasW4A4() {
		out[nunchaku.MetaQuantizationConfig] = nunchaku.QuantizationConfig(p.Precision, p.Rank)
	}
	if p.preset.Config != "" {
		out[nunchaku.MetaConfig] = p.preset.Config
	}
	if p.Layout != nil && p.Layout.Comfy {
		cc, err := engine.ComfyFluxConfig(p.preset.Config)
		if err != nil {
			return nil, fmt.Errorf("%s: comfy_config: %v", p.Model, err)
		}
		out[engine.MetaComfyConfig] = cc
	}
	if p.ModelClass != "" {
		out[nunchaku.MetaModelClass] = p.ModelClass
	}
	return out, nil
}
