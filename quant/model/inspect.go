package model

import (
	"fmt"
	"strings"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	input "github.com/svdq/svdq/formats/source"
)

// TensorEntry is one tensor of an inspected checkpoint.
type TensorEntry struct {
	Name  string  `json:"name"`
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
	Bytes int64   `json:"bytes"`
	// ReadAs is, for a tensor svdq reads dequantized (formats/source: a
	// GGUF block type, scaled FP8), the dtype it is read as ("F32"); DType
	// and Bytes are then as stored ("Q4_K", "F8_E4M3").
	ReadAs string `json:"read_as,omitempty"`
}

// QuantLayer is one quantized layer of an inspected checkpoint.
type QuantLayer struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`      // w4a4 or w4a16
	Precision string `json:"precision"` // int4 or nvfp4 (w4a16 layers: int4)
	N         int    `json:"n"`         // logical sizes from the svdq metadata, else as stored (padded)
	K         int    `json:"k"`
	Rank      int    `json:"rank"`
	Bytes     int64  `json:"bytes"`
	Source    string `json:"source"` // where precision and rank come from: "svdq metadata" or "tensors"
	// SHA256 is the integrity hash the svdq metadata records for the
	// layer's packed tensors ("" when none).
	SHA256 string `json:"sha256,omitempty"`
	// Integrity is set by InspectOptions.Verify: IntegrityOK,
	// IntegrityMismatch or IntegrityAbsent.
	Integrity string `json:"integrity,omitempty"`
}

// InspectOptions configure Inspect.
type InspectOptions struct {
	// Verify reads every quantized layer's packed tensors and checks them
	// against the hash the svdq metadata records (QuantLayer.Integrity).
	Verify bool
}

// Inspection describes a checkpoint: tensors, totals, metadata, family and
// quantized layers.
type Inspection struct {
	Path     string            `json:"path"`
	Tensors  []TensorEntry     `json:"tensors"`
	Count    int               `json:"count"`
	Bytes    int64             `json:"bytes"`  // tensor data
	Params   int64             `json:"params"` // elements of every tensor
	ByDType  map[string]int64  `json:"bytes_by_dtype"`
	Metadata map[string]string `json:"metadata"`
	// Family is the preset family: from the svdq metadata of a quantized
	// file, else detected from the tensor names ("" when none matches;
	// FamilyNote says why).
	Family     string       `json:"family"`
	FamilyNote string       `json:"family_note,omitempty"`
	Layers     []QuantLayer `json:"quantized_layers"`
	// Hashed counts the quantized layers whose svdq entry records an
	// integrity hash.
	Hashed int `json:"hashed_layers"`
	// Mismatches details, with InspectOptions.Verify, the layers whose
	// bytes differ from their record.
	Mismatches []LayerIntegrity `json:"mismatches,omitempty"`
	// Engines says, per engine that runs the family (formats/engine),
	// whether the file loads there and why not.
	Engines    []engine.Verdict `json:"engines"`
	EngineNote string           `json:"engine_note,omitempty"`
	// LoRAs is the fuse-lora provenance record (formats/lora), nil when
	// no LoRA is fused.
	LoRAs *lora.Provenance `json:"loras,omitempty"`
	// Format, Found, Components and Dequant say how the file was read
	// (formats/source): "safetensors" or "gguf"; stored dtypes or ggml
	// types with their tensor counts; an all-in-one file's components
	// (Tensors then lists the diffusion model's); dequantizations done
	// (Tensors then lists the dequantized dtype, F32).
	Format     string            `json:"format"`
	Found      map[string]int    `json:"dtypes_found"`
	Components []input.Component `json:"components,omitempty"`
	Dequant    []input.Dequant   `json:"dequantized,omitempty"`
}

// Inspect reads the header of the checkpoint at path (a file, sharded
// index or diffusers folder); no tensor data is read unless opt.Verify.
func Inspect(path string, opt InspectOptions) (*Inspection, error) {
	r, err := input.Open(path) // GGUF, all-in-one and scaled FP8 read as quantize reads them
	if err != nil {
		return nil, err
	}
	defer r.Close()
	in := &Inspection{Path: path, Metadata: r.Metadata(), ByDType: map[string]int64{}, Tensors: []TensorEntry{},
		Layers: []QuantLayer{}, Format: r.Format, Found: r.Found, Components: r.Components, Dequant: r.Dequant}
	var infos []nunchaku.TensorInfo
	for _, n := range r.Names() {
		i, _ := r.Info(n)
		e := TensorEntry{Name: n, DType: string(i.DType), Shape: i.Shape, Bytes: i.End - i.Begin}
		if form, ok := r.Dequantized(n); ok {
			e.ReadAs = e.DType
			e.DType, _, _ = strings.Cut(form, " ")
			e.Bytes, _ = r.StoredSize(n)
		}
		in.Tensors = append(in.Tensors, e)
		in.Bytes += e.Bytes
		in.Params += i.Elems()
		in.ByDType[e.DType] += e.Bytes
		infos = append(infos, nunchaku.TensorInfo{Name: n, DType: e.DType, Shape: i.Shape})
	}
	in.Count = len(in.Tensors)

	var meta *nunchaku.Meta
	if s, ok := in.Metadata[nunchaku.MetaSVDQ]; ok {
		if meta, err = nunchaku.ParseMeta(s); err != nil {
			in.FamilyNote = "unreadable svdq metadata: " + err.Error()
		}
	}
	if meta != nil {
		in.Family = meta.Family
	} else if fam, err := preset.Detect(table{r}); err == nil {
		in.Family = fam.Name()
	} else if in.FamilyNote == "" {
		in.FamilyNote = err.Error()
	}
	if s, ok := in.Metadata[lora.MetaKey]; ok { // fuse-lora
		if in.LoRAs, err = lora.ParseProvenance(s); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
	}
	for _, s := range nunchaku.Describe(infos) {
		q := QuantLayer{Name: s.Name, Kind: s.Kind, Precision: s.Precision, N: s.N, K: s.K, Rank: s.R,
			Bytes: s.Bytes, Source: "tensors"}
		if meta != nil {
			if lm, ok := meta.Layer(s.Name); ok {
				q.Precision, q.N, q.K, q.Rank, q.Source, q.SHA256 = lm.Precision, lm.N, lm.K, lm.R, "svdq metadata", lm.SHA256
			}
		}
		if q.SHA256 != "" {
			in.Hashed++
		}
		in.Layers = append(in.Layers, q)
	}
	if len(in.Layers) > 0 {
		ef := engineFile(r)
		fam := in.Family
		if engine.FamilyOf(fam) == "" {
			fam = engine.Guess(ef)
		}
		in.Engines = engine.CheckAll(fam, ef)
		if len(in.Engines) == 0 {
			in.EngineNote = fmt.Sprintf("no nunchaku engine runs family %q", in.Family)
		}
	}
	if opt.Verify {
		ints, err := VerifyIntegrity(path, nil)
		if err != nil {
			return nil, err
		}
		byName := map[string]string{}
		for _, li := range ints {
			byName[li.Name] = li.Status
		}
		for i := range in.Layers {
			if in.Layers[i].Integrity = byName[in.Layers[i].Name]; in.Layers[i].Integrity == "" {
				in.Layers[i].Integrity = IntegrityAbsent
			}
		}
		in.Mismatches = Mismatches(ints)
	}
	return in, nil
}

// LeftOut returns the components of an all-in-one file other than the
// diffusion model (whose tensors Tensors lists).
func (in *Inspection) LeftOut() []input.Component {
	if len(in.Components) < 2 {
		return nil
	}
	return in.Components[1:]
}
