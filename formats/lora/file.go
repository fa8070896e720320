package lora

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// File is an open LoRA file: its modules, the keys it could not read, and
// its SHA-256. Factors are decoded on demand from the memory-mapped file;
// Close releases it.
type File struct {
	Path    string
	SHA256  string   // hex digest of the whole file
	Format  string   // styles found, joined by "+" (e.g. "kohya", "peft")
	Modules []Module // sorted by Key
	// Unknown lists the keys that are not LoRA factors or alphas, and
	// alphas whose module has no factors, sorted.
	Unknown []string
	// Control lists the non-factor keys svdq does not fuse: a bias delta
	// (lora_B.bias) whose module has no plain LoRA factors, lora_A.bias,
	// LyCORIS diff_b (sorted). A BFL control LoRA's bias deltas are on
	// their Module (Bias), its norm scales in Norms.
	Control []string
	// Norms lists a control LoRA's norm scales (BFL <…>_norm.scale, FLUX.1
	// Canny/Depth; diffusers <…>.attn.norm_q.weight etc. once converted),
	// sorted: replacements of the model's RMSNorm weights (see vector.go).
	Norms []string
	// TextEncoder lists the keys of text-encoder modules (lora_te*,
	// text_encoder*): an svdq file holds no text encoder, so they are
	// reported as not in the file and never fused (sorted).
	TextEncoder []string

	r        safetensors.Reader
	base     safetensors.Reader // OpenDiff's base checkpoint
	basePath string
}

// Module is one LoRA module. Its ΔW before the strength is
//
//	lora  (α/r)·B·A                       A [r, K], B [N, r]
//	loha  (α/r)·(w1a·w1b) ⊙ (w2a·w2b)     r = rows of hada_w1_b
//	lokr  (α/r)·w1 ⊗ w2                   r = rows of lokr_w2_b, else of lokr_w1_b; 1 when both are full
//	diff  W_finetuned − W_base
//	full  the LyCORIS full module's diff tensor (α not used)
//
// with α = r when the file has none (ComfyUI comfy/weight_adapter/loha.py,
// lokr.py: no alpha is a scale of 1).
type Module struct {
	Key   string // module part of the keys, as written (prefix included); XLabs: the module it maps to
	Style string
	Type  string // TypeLoRA, TypeLoHa, TypeLoKr or TypeDiff
	// Rank is r above: the LoRA's rank, the LoHa's, the LoKr's decomposed
	// factor's, 0 for a LoKr with both factors full and for a diff.
	Rank int
	N, K int // ΔW is [N, K]
	// Alpha is the file's α, or Rank when the file has none (HasAlpha false).
	Alpha    float64
	HasAlpha bool
	A, B     string // tensor names of the factors (diff: the fine-tuned and the base tensor)
	// T holds the tensor names of a LoHa or LoKr module by role.
	T map[role]string
	// Split takes one third of B's rows (1 the first, 3 the last): an
	// XLabs single-block qkv LoRA is q, k and v sharing A. 0: all rows.
	Split int
	// Dora names the module's DoRA magnitude ("" for none); DoraOut is
	// true when it is per output row ([N] or [N, 1]), false per input
	// column ([1, K]). See DenseDoRA.
	Dora    string
	DoraOut bool
	// Bias names the module's bias delta <module>.lora_B.bias ("" for
	// none): a float vector [N] added, times Scale(strength), to the bias
	// of the rows B feeds (see vector.go).
	Bias string

	f *File
}

// LowRank reports whether the module's ΔW is given as factors B·A (a
// plain LoRA without DoRA), which fuse exactly; the others form a dense
// ΔW.
func (m *Module) LowRank() bool { return m.Type == TypeLoRA && m.Dora == "" }

// Scale returns the factor of the module's ΔW: strength·α/r for its
// product (strength alone when Rank is 0), strength for a DoRA module
// (whose α/r is inside DenseDoRA).
func (m *Module) Scale(strength float64) float64 {
	if m.Rank == 0 || m.Dora != "" {
		return strength
	}
	return m.ownScale() * strength
}

// ownScale is α/r (1 when Rank is 0).
func (m *Module) ownScale() float64 {
	if m.Rank == 0 {
		return 1
	}
	return m.Alpha / float64(m.Rank)
}

// Shape formats the module's ΔW shape for messages.
func (m *Module) Shape() string { return fmt.Sprintf("[%d %d]", m.N, m.K) }

// Open reads and validates a LoRA file's header and alphas and hashes the
// whole file. Errors name the file and the tensor: a factor that is not a
// float matrix [r, K] / [N, r] (or a 1×1 convolution), an A without its B
// or the reverse, ranks that disagree, a rank of 0, an alpha that is not a
// finite scalar. Keys that are not LoRA factors are listed in Unknown, not
// errors: the caller decides (fuse-lora refuses them unless told
// otherwise).
func Open(path string) (*File, error) {
	sum, err := hashFile(path)
	if err != nil {
		return nil, err
	}
	r, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	f, err := parse(r, path)
	if err != nil {
		r.Close()
		return nil, err
	}
	f.SHA256 = sum
	return f, nil
}

// Close releases the file's mapping(s); factors can no longer be read.
func (f *File) Close() error {
	if f.base != nil {
		f.base.Close()
	}
	return f.r.Close()
}

// hashFile returns the hex SHA-256 of the files' contents, one after the
// other.
func hashFile(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		fh, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// parse groups the keys of r into modules.
func parse(r safetensors.Reader, path string) (*File, error) {
	type parts struct {
		t     map[role]string
		style string
	}
	mods := map[string]*parts{}
	f := &File{Path: path, r: r}
	for _, key := range r.Names() {
		if isTextEncoder(key) {
			f.TextEncoder = append(f.TextEncoder, key)
			continue
		}
		m, rl, style, ok := splitKey(key)
		if !ok {
			if isControlKey(key) {
				f.Control = append(f.Control, key)
			} else {
				f.Unknown = append(f.Unknown, key)
			}
			continue
		}
		p := mods[m]
		if p == nil {
			p = &parts{t: map[role]string{}}
			mods[m] = p
		}
		if prev, dup := p.t[rl]; dup {
			return nil, fmt.Errorf("%s: tensor %q: module %s already has that factor (%s)", path, key, m, prev)
		}
		p.t[rl] = key
		if style != "" {
			p.style = style
		}
	}
	styles := map[string]bool{}
	for name, p := range mods {
		if lone := onlyExtras(p.t); lone != nil {
			f.Unknown = append(f.Unknown, lone...) // an alpha or a magnitude alone
			continue
		}
		m := Module{Key: name, Style: moduleStyle(name, p.style), f: f}
		var err error
		switch {
		case hasAny(p.t, roleHadaW1A, roleHadaW1B, roleHadaW2A, roleHadaW2B, roleHadaT1, roleHadaT2):
			err = m.parseLoHa(r, path, p.t)
		case hasAny(p.t, roleLokrW1, roleLokrW1A, roleLokrW1B, roleLokrW2, roleLokrW2A, roleLokrW2B, roleLokrT2):
			err = m.parseLoKr(r, path, p.t)
		case hasAny(p.t, roleFullDiff):
			err = m.parseFull(r, path, p.t)
		default:
			err = m.parseLoRA(r, path, p.t)
		}
		if err != nil {
			return nil, err
		}
		if err := m.parseDora(r, path, p.t[roleDora]); err != nil {
			return nil, err
		}
		if m.Alpha = float64(m.Rank); p.t[roleAlpha] != "" {
			a, err := readAlpha(r, path, p.t[roleAlpha])
			if err != nil {
				return nil, err
			}
			m.Alpha, m.HasAlpha = a, true
		}
		styles[m.Style] = true
		if m.Style == StyleXLabs {
			if m.Dora != "" {
				return nil, fmt.Errorf("%s: tensor %q: DoRA on an XLabs processor LoRA", path, m.Dora)
			}
			ts, _ := xlabsTargets(name)
			for _, t := range ts {
				x := m
				x.Key, x.Split = t.module, t.split
				if t.split > 0 {
					if m.N%3 != 0 {
						return nil, fmt.Errorf("%s: tensor %q: %d rows do not split into q, k, v", path, m.B, m.N)
					}
					x.N = m.N / 3
				}
				f.Modules = append(f.Modules, x)
			}
			continue
		}
		f.Modules = append(f.Modules, m)
	}
	sort.Slice(f.Modules, func(i, j int) bool { return f.Modules[i].Key < f.Modules[j].Key })
	for i := range f.Modules {
		f.Modules[i].f = f
	}
	if err := f.parseControl(); err != nil {
		return nil, err
	}
	sort.Strings(f.Unknown)
	sort.Strings(f.Control)
	sort.Strings(f.TextEncoder)
	f.Format = joinStyles(styles)
	return f, nil
}

// onlyExtras returns the tensors of a module that has nothing but an
// alpha and/or a DoRA magnitude, nil otherwise.
func onlyExtras(t map[role]string) []string {
	var out []string
	for r, n := range t {
		if r != roleAlpha && r != roleDora {
			return nil
		}
		out = append(out, n)
	}
	return out
}

func hasAny(t map[role]string, roles ...role) bool {
	for _, r := range roles {
		if t[r] != "" {
			return true
		}
	}
	return false
}

// onlyRoles returns an error naming the first tensor of t whose role is
// not in allowed (a LoRA factor beside LoHa factors, say).
func onlyRoles(path, module, kind string, t map[role]string, allowed ...role) error {
	var names []string
	for r, name := range t {
		ok := r == roleAlpha || r == roleDora
		for _, a := range allowed {
			ok = ok || r == a
		}
		if !ok {
			names = append(names, name)
		}
	}
	if len(names) > 0 {
		sort.Strings(names)
		return fmt.Errorf("%s: tensor %q: module %s mixes it with %s factors", path, names[0], module, kind)
	}
	return nil
}

// parseLoRA reads a plain LoRA module: A [r, K], B [N, r].
func (m *Module) parseLoRA(r safetensors.Reader, path string, t map[role]string) error {
	m.Type = TypeLoRA
	if err := onlyRoles(path, m.Key, "LoRA", t, roleA, roleB); err != nil {
		return err
	}
	m.A, m.B = t[roleA], t[roleB]
	if m.A == "" || m.B == "" {
		have, miss := m.A, "B (up)"
		if m.A == "" {
			have, miss = m.B, "A (down)"
		}
		return fmt.Errorf("%s: tensor %q: module %s has no %s factor", path, have, m.Key, miss)
	}
	ra, k, err := factorShape(r, path, m.A)
	if err != nil {
		return err
	}
	n, rb, err := factorShape(r, path, m.B)
	if err != nil {
		return err
	}
	if ra != rb || ra == 0 {
		return fmt.Errorf("%s: tensor %q: rank %d, but %q has rank %d (want equal and > 0)", path, m.A, ra, m.B, rb)
	}
	m.Rank, m.N, m.K = ra, n, k
	return nil
}

// factorShape returns the [rows, cols] of a factor: a float tensor [a, b] or
// [a, b, 1, 1].
func factorShape(r safetensors.Reader, path, name string) (rows, cols int, err error) {
	info, _ := r.Info(name)
	if !floatDType(info.DType) {
		return 0, 0, fmt.Errorf("%s: tensor %q: dtype %s is not a float type", path, name, info.DType)
	}
	s := info.Shape
	if !(len(s) == 2 || (len(s) == 4 && s[2] == 1 && s[3] == 1)) {
		return 0, 0, fmt.Errorf("%s: tensor %q: shape %v is not a matrix or a 1×1 convolution", path, name, s)
	}
	const limit = 1 << 24 // far beyond any real width; keeps rows·cols in an int
	if s[0] > limit || s[1] > limit {
		return 0, 0, fmt.Errorf("%s: tensor %q: shape %v is too large", path, name, s)
	}
	return int(s[0]), int(s[1]), nil
}

func floatDType(d safetensors.DType) bool {
	switch d {
	case safetensors.F64, safetensors.F32, safetensors.F16, safetensors.BF16, safetensors.F8E4M3, safetensors.F8E5M2:
		return true
	}
	return false
}

// readAlpha reads a finite float scalar of shape [] or [1].
func readAlpha(r safetensors.Reader, path, name string) (float64, error) {
	info, _ := r.Info(name)
	if !floatDType(info.DType) {
		return 0, fmt.Errorf("%s: tensor %q: alpha dtype %s is not a float type", path, name, info.DType)
	}
	if info.Elems() != 1 || len(info.Shape) > 1 {
		return 0, fmt.Errorf("%s: tensor %q: alpha shape %v, want [] or [1]", path, name, info.Shape)
	}
	raw, err := r.Bytes(name)
	if err != nil {
		return 0, err
	}
	v := make([]float32, 1)
	if info.DType == safetensors.F64 { // keep the full value
		a := math.Float64frombits(binary.LittleEndian.Uint64(raw))
		if math.IsNaN(a) || math.IsInf(a, 0) {
			return 0, fmt.Errorf("%s: tensor %q: alpha %v is not finite", path, name, a)
		}
		return a, nil
	}
	if err := quant.Decode(v, string(info.DType), raw); err != nil {
		return 0, fmt.Errorf("%s: tensor %q: %v", path, name, err)
	}
	if quant.FirstNonFinite(v) >= 0 {
		return 0, fmt.Errorf("%s: tensor %q: alpha %v is not finite", path, name, v[0])
	}
	return float64(v[0]), nil
}

// Factors decodes a plain LoRA module's factors to float32: A [Rank, K]
// and B [N, Rank] (an XLabs split's third of the rows), newly allocated.
// Errors name the file and tensor, including the first NaN or ±Inf value.
// It panics for a module that is not TypeLoRA.
func (m *Module) Factors() (a, b []float32, err error) {
	if m.Type != TypeLoRA {
		panic("lora: Module.Factors of a " + m.Type + " module")
	}
	if a, err = m.f.decode(m.A, m.Rank*m.K, m.K); err != nil {
		return nil, nil, err
	}
	rows := m.N
	if m.Split > 0 {
		rows = 3 * m.N
	}
	if b, err = m.f.decode(m.B, rows*m.Rank, m.Rank); err != nil {
		return nil, nil, err
	}
	if m.Split > 0 {
		b = b[(m.Split-1)*m.N*m.Rank : m.Split*m.N*m.Rank]
	}
	return a, b, nil
}

func (f *File) decode(name string, n, cols int) ([]float32, error) {
	return decodeFrom(f.r, f.Path, name, n, cols)
}

// decodeFrom decodes tensor name of r (n values, rows of cols) to float32,
// refusing NaN and ±Inf.
func decodeFrom(r safetensors.Reader, path, name string, n, cols int) ([]float32, error) {
	info, _ := r.Info(name)
	if info.Elems() != int64(n) {
		return nil, fmt.Errorf("%s: tensor %q: %d values, want %d", path, name, info.Elems(), n)
	}
	raw, err := r.Bytes(name)
	if err != nil {
		return nil, err
	}
	v := make([]float32, n)
	if err := quant.Decode(v, string(info.DType), raw); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %v", path, name, err)
	}
	if i := quant.FirstNonFinite(v); i >= 0 {
		return nil, fmt.Errorf("%s: tensor %q: non-finite value %v at [%d, %d]", path, name, v[i], i/cols, i%cols)
	}
	return v, nil
}

// ParseSpec splits a command-line LoRA argument FILE[:STRENGTH]: the text
// after the last ':' is the strength when it parses as a finite number
// (so "C:\x.safetensors" is a path); the strength defaults to 1.
func ParseSpec(s string) (path string, strength float64, err error) {
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if isNumber(s[i+1:]) {
			v, err := strconv.ParseFloat(s[i+1:], 64)
			if err != nil || math.IsInf(v, 0) {
				return "", 0, fmt.Errorf("lora %q: strength %s is not a finite number", s, s[i+1:])
			}
			return s[:i], v, nil
		}
	}
	if s == "" {
		return "", 0, fmt.Errorf("empty lora argument")
	}
	return s, 1, nil
}

// isNumber reports whether s is a plain decimal number (sign, digits, one
// point, optional exponent), as a strength is written.
func isNumber(s string) bool {
	if s == "" {
		return false
	}
	i := 0
	if s[0] == '+' || s[0] == '-' {
		i++
	}
	digits, dot := 0, false
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		case (c == 'e' || c == 'E') && digits > 0:
			rest := s[i+1:]
			if rest != "" && (rest[0] == '+' || rest[0] == '-') {
				rest = rest[1:]
			}
			if rest == "" {
				return false
			}
			for _, d := range rest {
				if d < '0' || d > '9' {
					return false
				}
			}
			return true
		default:
			return false
		}
	}
	return digits > 0
}
