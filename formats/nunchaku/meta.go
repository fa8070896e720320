package nunchaku

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"

	"github.com/svdq/svdq/quant"
)

// The svdq metadata entry: a JSON string stored under the safetensors
// metadata key "svdq" that records, for every quantized layer, what the
// padded tensors hide (logical sizes, shifted input, chunk count) and where
// its weight came from, so that fuse-lora, check and unpack can map the
// source model's names onto the file from the file alone.
//
// Example (one layer, wrapped):
//
//	{"version":1,"tool":"svdq 0.1.0","family":"flux.1-dev","precision":"int4","rank":32,
//	 "layers":[{"name":"transformer_blocks.0.qkv_proj","kind":"w4a4","n":9216,"k":3072,"r":32,
//	 "group":64,"precision":"int4","dtype":"BF16","smooth":{"alpha":0.45,"beta":0.55},
//	 "shifted":false,"sources":[{"tensor":"transformer_blocks.0.attn.to_q.weight",
//	 "bias":"transformer_blocks.0.attn.to_q.bias","rows":[0,3072],"src_rows":[0,3072],
//	 "src_cols":[0,3072]}, ...],"sha256":"5e0c…(64 hex digits)"}]}

// MetaVersion is the version of the svdq entry that Marshal writes; ParseMeta
// rejects any other.
const MetaVersion = 1

// Layer kinds.
const (
	KindW4A4  = "w4a4"  // SVDQuant layer (PackW4A4)
	KindW4A16 = "w4a16" // weight-only adaLN layer (PackW4A16)
	// KindW4A16G128 is a weight-only layer of nunchaku's 4-bit T5 text
	// encoder: TinyChat's W4Linear layout (PackW4Linear), group 128.
	KindW4A16G128 = "w4a16g128"
)

// Meta is the svdq metadata entry of a checkpoint.
type Meta struct {
	Version   int         `json:"version"`   // MetaVersion
	Tool      string      `json:"tool"`      // writer and version, e.g. "svdq 0.1.0"
	Family    string      `json:"family"`    // model preset, e.g. "flux.1-dev"
	Precision string      `json:"precision"` // "int4" or "nvfp4": the W4A4 layers' format
	Rank      int         `json:"rank"`      // requested low-rank size (before padding to 16)
	Layers    []LayerMeta `json:"layers"`    // Marshal sorts them by name (numbers numerically)
}

// LayerMeta describes one quantized layer of the file.
type LayerMeta struct {
	Name      string `json:"name"` // tensor prefix in the file, e.g. "transformer_blocks.0.qkv_proj"
	Kind      string `json:"kind"` // KindW4A4, KindW4A16 or KindW4A16G128
	N         int    `json:"n"`    // logical out-features (before padding)
	K         int    `json:"k"`    // logical in-features
	R         int    `json:"r"`    // logical rank (0 for the weight-only kinds)
	Group     int    `json:"group"`
	Precision string `json:"precision"` // "int4" or "nvfp4" (weight-only kinds: "int4")
	DType     string `json:"dtype"`     // model dtype of the 16-bit tensors: "BF16" or "F16"
	// Smooth is the chosen smoothing λ = ax^α / aw^β; required for W4A4
	// (α = β = 0: none), absent for W4A16.
	Smooth *Smoothing `json:"smooth,omitempty"`
	// Shifted marks the INT4 MLP second linear whose input is the shifted,
	// unsigned GELU output (quant.Layer.Unsigned).
	Shifted bool `json:"shifted"`
	// Chunks is the W4A16 output chunk count (6 or 3 for FLUX); absent for W4A4.
	Chunks int `json:"chunks,omitempty"`
	// Sources are the source-model tensors this layer was built from; their
	// Rows are disjoint ranges of [0, N) in the logical (checkpoint,
	// un-interleaved) row order. Rows no source covers are zero padding
	// inside a fused layer (SANA's q|k|v, each padded to a multiple of 128).
	Sources []SourceMeta `json:"sources"`
	// SHA256 is the integrity hash of the layer's packed tensors as written
	// (LayerHash, meta_hash.go): HashLen lowercase hex digits, or "" (absent:
	// files written before svdq recorded it). svdq quantize and fuse-lora
	// write it; check, gpu-check, unpack and fuse-lora verify it.
	SHA256 string `json:"sha256,omitempty"`
}

// Smoothing holds the exponents of the chosen smoothing.
type Smoothing struct {
	Alpha Ratio `json:"alpha"`
	Beta  Ratio `json:"beta"`
}

// Ratio is a smoothing exponent: a multiple of 0.01 in [0, 1] (the search
// grid uses multiples of 0.05). It is always written with exactly two
// decimals ("0.05", "1.00"), so the length of the metadata does not depend
// on the values chosen: a writer can marshal a Meta with placeholder
// exponents to size the file header before the search finishes.
type Ratio float64

// MarshalJSON writes r with two decimals; it fails when r is not a multiple
// of 0.01 in [0, 1].
func (r Ratio) MarshalJSON() ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	return []byte(strconv.FormatFloat(float64(r), 'f', 2, 64)), nil
}

func (r Ratio) check() error {
	f := float64(r)
	if !(f >= 0 && f <= 1) || math.Abs(f*100-math.Round(f*100)) > 1e-6 {
		return fmt.Errorf("smoothing exponent %v is not a multiple of 0.01 in [0, 1]", f)
	}
	return nil
}

// SourceMeta maps a block of the fused layer's rows to a source tensor:
// rows Rows[0]..Rows[1]-1 of the layer are rows SrcRows of tensor Tensor,
// restricted to its columns SrcCols (whose width is the layer's K). Bias
// names the source bias tensor supplying the same rows, "" when there is
// none. Ranges are half-open [begin, end).
type SourceMeta struct {
	Tensor  string `json:"tensor"`
	Bias    string `json:"bias,omitempty"`
	Rows    Range  `json:"rows"`
	SrcRows Range  `json:"src_rows"`
	SrcCols Range  `json:"src_cols"`
}

// Range is a half-open index range [begin, end), written as a two-element
// JSON array.
type Range [2]int

// UnmarshalJSON accepts exactly two integers.
func (r *Range) UnmarshalJSON(b []byte) error {
	var v []int
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if len(v) != 2 {
		return fmt.Errorf("range %s does not have two elements", b)
	}
	r[0], r[1] = v[0], v[1]
	return nil
}

// W4A4Meta returns the entry of a packed W4A4 layer: sizes, group,
// precision, dtype and shifted flag from l, the given smoothing and sources.
func W4A4Meta(name string, l *quant.Layer, s Smoothing, sources []SourceMeta) LayerMeta {
	return LayerMeta{Name: name, Kind: KindW4A4, N: l.N, K: l.K, R: l.R,
		Group: l.Precision.GroupSize(), Precision: l.Precision.String(), DType: l.DType.String(),
		Smooth: &s, Shifted: l.Unsigned, Sources: sources}
}

// W4A16Meta returns the entry of a W4A16 layer packed with chunks chunks.
func W4A16Meta(name string, w *quant.WeightOnly, chunks int, sources []SourceMeta) LayerMeta {
	return LayerMeta{Name: name, Kind: KindW4A16, N: w.N, K: w.K, Group: 64,
		Precision: quant.INT4.String(), DType: w.DType.String(), Chunks: chunks, Sources: sources}
}

// W4A16G128Meta returns the entry of a W4Linear layer (PackW4Linear).
func W4A16G128Meta(name string, w *quant.WeightOnly, sources []SourceMeta) LayerMeta {
	return LayerMeta{Name: name, Kind: KindW4A16G128, N: w.N, K: w.K, Group: W4LinearGroup,
		Precision: quant.INT4.String(), DType: w.DType.String(), Sources: sources}
}

// W4A4Options returns the UnpackW4A4 options of the layer; file prefixes
// error messages.
func (lm *LayerMeta) W4A4Options(file string) W4A4Options {
	p, _ := quant.ParsePrecision(lm.Precision)
	return W4A4Options{Name: file + ": " + lm.Name, N: lm.N, K: lm.K, R: lm.R, Precision: p, Unsigned: lm.Shifted}
}

// W4A16Options returns the UnpackW4A16 options of the layer.
func (lm *LayerMeta) W4A16Options(file string) W4A16Options {
	return W4A16Options{Name: file + ": " + lm.Name, Chunks: lm.Chunks, N: lm.N, K: lm.K}
}

// W4LinearOptions returns the UnpackW4Linear options of the layer.
func (lm *LayerMeta) W4LinearOptions(file string) W4LinearOptions {
	return W4LinearOptions{Name: file + ": " + lm.Name, Group: lm.Group, N: lm.N, K: lm.K}
}

// WeightOnly reports whether the layer is one of the weight-only kinds
// (KindW4A16, KindW4A16G128): no smoothing, no low-rank branch.
func (lm *LayerMeta) WeightOnly() bool { return lm.Kind == KindW4A16 || lm.Kind == KindW4A16G128 }

// Layer returns the entry named name.
func (m *Meta) Layer(name string) (*LayerMeta, bool) {
	for i := range m.Layers {
		if m.Layers[i].Name == name {
			return &m.Layers[i], true
		}
	}
	return nil, false
}

// Marshal validates m and returns its JSON: compact, fields in declaration
// order, layers sorted by name with digit runs compared as numbers, no HTML
// escaping; equal Metas give identical bytes. m is not modified.
func (m *Meta) Marshal() (string, error) {
	if err := m.Validate(); err != nil {
		return "", err
	}
	c := *m
	c.Layers = append([]LayerMeta(nil), m.Layers...)
	sort.SliceStable(c.Layers, func(i, j int) bool { return naturalLess(c.Layers[i].Name, c.Layers[j].Name) })
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return "", fmt.Errorf("nunchaku: svdq metadata: %v", err)
	}
	return string(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))), nil
}

// ParseMeta reads an svdq metadata entry strictly: the version must be
// MetaVersion, unknown fields and trailing data are errors, and the result
// must pass Validate.
func ParseMeta(s string) (*Meta, error) {
	var v struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("nunchaku: svdq metadata: %v", err)
	}
	if v.Version == nil {
		return nil, errors.New("nunchaku: svdq metadata: no version")
	}
	if *v.Version != MetaVersion {
		return nil, fmt.Errorf("nunchaku: svdq metadata: version %d, this build reads %d", *v.Version, MetaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	m := new(Meta)
	if err := dec.Decode(m); err != nil {
		return nil, fmt.Errorf("nunchaku: svdq metadata: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("nunchaku: svdq metadata: trailing data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// Validate checks the entry's consistency: version, precisions, unique layer
// names, sizes, group sizes, kind-specific fields, exponents, the form of
// recorded hashes (not their value: that needs the tensors), and that each
// layer's sources tile its rows [0, N) exactly, each with as many source rows
// as layer rows and K source columns.
func (m *Meta) Validate() error {
	if m.Version != MetaVersion {
		return fmt.Errorf("nunchaku: svdq metadata: version %d, want %d", m.Version, MetaVersion)
	}
	if _, err := quant.ParsePrecision(m.Precision); err != nil {
		return fmt.Errorf("nunchaku: svdq metadata: %v", err)
	}
	if m.Rank < 0 {
		return fmt.Errorf("nunchaku: svdq metadata: negative rank %d", m.Rank)
	}
	seen := make(map[string]bool, len(m.Layers))
	for i := range m.Layers {
		lm := &m.Layers[i]
		if seen[lm.Name] {
			return fmt.Errorf("nunchaku: svdq metadata: layer %q listed twice", lm.Name)
		}
		seen[lm.Name] = true
		if err := lm.validate(); err != nil {
			return fmt.Errorf("nunchaku: svdq metadata: layer %q: %v", lm.Name, err)
		}
	}
	return nil
}

func (lm *LayerMeta) validate() error {
	if lm.Name == "" {
		return errors.New("empty name")
	}
	if lm.N <= 0 || lm.K <= 0 || lm.R < 0 {
		return fmt.Errorf("bad shape n=%d k=%d r=%d", lm.N, lm.K, lm.R)
	}
	if _, ok := float16Of(lm.DType); !ok {
		return fmt.Errorf("dtype %q, want BF16 or F16", lm.DType)
	}
	p, err := quant.ParsePrecision(lm.Precision)
	if err != nil {
		return err
	}
	switch lm.Kind {
	case KindW4A4:
		if lm.Group != p.GroupSize() {
			return fmt.Errorf("group %d, want %d for %v", lm.Group, p.GroupSize(), p)
		}
		if lm.Smooth == nil {
			return errors.New("w4a4 layer without smoothing exponents")
		}
		if err := lm.Smooth.Alpha.check(); err != nil {
			return err
		}
		if err := lm.Smooth.Beta.check(); err != nil {
			return err
		}
		if lm.Shifted && p != quant.INT4 {
			return errors.New("shifted input on a non-INT4 layer")
		}
		if lm.Chunks != 0 {
			return fmt.Errorf("chunks %d on a w4a4 layer", lm.Chunks)
		}
	case KindW4A16:
		if p != quant.INT4 || lm.Group != 64 || lm.R != 0 || lm.Smooth != nil || lm.Shifted {
			return errors.New("w4a16 layer must be int4, group 64, r 0, without smoothing or shift")
		}
		if lm.Chunks < 1 || lm.N%lm.Chunks != 0 {
			return fmt.Errorf("n=%d does not split into %d chunks", lm.N, lm.Chunks)
		}
	case KindW4A16G128:
		if p != quant.INT4 || lm.Group != W4LinearGroup || lm.R != 0 || lm.Smooth != nil || lm.Shifted || lm.Chunks != 0 {
			return fmt.Errorf("%s layer must be int4, group %d, r 0, without smoothing, shift or chunks", KindW4A16G128, W4LinearGroup)
		}
		if lm.K%W4LinearGroup != 0 || lm.N%8 != 0 {
			return fmt.Errorf("%s layer [%d %d]: k must be a multiple of %d and n of 8", KindW4A16G128, lm.N, lm.K, W4LinearGroup)
		}
	default:
		return fmt.Errorf("kind %q, want %s, %s or %s", lm.Kind, KindW4A4, KindW4A16, KindW4A16G128)
	}
	if err := checkHash(lm.SHA256); err != nil {
		return err
	}
	if len(lm.Sources) == 0 {
		return errors.New("no sources")
	}
	src := append([]SourceMeta(nil), lm.Sources...)
	sort.SliceStable(src, func(i, j int) bool { return src[i].Rows[0] < src[j].Rows[0] })
	next := 0
	for _, s := range src {
		switch {
		case s.Tensor == "":
			return errors.New("source without a tensor name")
		case s.Rows[0] < next || s.Rows[1] <= s.Rows[0]:
			return fmt.Errorf("source %q rows %v: the sources' rows must be disjoint ranges in [0, %d)", s.Tensor, s.Rows, lm.N)
		case s.SrcRows[0] < 0 || s.SrcRows[1]-s.SrcRows[0] != s.Rows[1]-s.Rows[0]:
			return fmt.Errorf("source %q src_rows %v do not match rows %v", s.Tensor, s.SrcRows, s.Rows)
		case s.SrcCols[0] < 0 || s.SrcCols[1]-s.SrcCols[0] != lm.K:
			return fmt.Errorf("source %q src_cols %v are not %d wide", s.Tensor, s.SrcCols, lm.K)
		}
		next = s.Rows[1]
	}
	if next > lm.N {
		return fmt.Errorf("sources reach row %d of a layer of %d rows", next, lm.N)
	}
	return nil
}

// naturalLess orders strings with runs of digits compared by value, so
// "blocks.2" sorts before "blocks.10".
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := trimZeros(a[:da]), trimZeros(b[:db])
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			if da != db { // same value, fewer leading zeros first
				return da < db
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitRun(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

func trimZeros(s string) string {
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	return s
}
