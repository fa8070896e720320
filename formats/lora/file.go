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

	r safetensors.Reader
}

// Module is one LoRA module: ΔW = (Alpha/Rank)·B·A before the strength.
type Module struct {
	Key   string // module part of the keys, as written (prefix included)
	Style string
	Rank  int
	N, K  int // B is [N, Rank], A is [Rank, K]
	// Alpha is the file's α, or Rank when the file has none (HasAlpha false).
	Alpha    float64
	HasAlpha bool
	A, B     string // tensor names of the factors

	f *File
}

// Scale returns strength·α/r, the factor of B·A, as float64.
func (m *Module) Scale(strength float64) float64 { return strength * m.Alpha / float64(m.Rank) }

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

// Close releases the file's mapping; factors can no longer be read.
func (f *File) Close() error { return f.r.Close() }

func hashFile(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// parse groups the keys of r into modules.
func parse(r safetensors.Reader, path string) (*File, error) {
	type parts struct {
		a, b, alpha string
		style       string
	}
	mods := map[string]*parts{}
	f := &File{Path: path, r: r}
	for _, key := range r.Names() {
		m, role, style, ok := splitKey(key)
		if !ok {
			f.Unknown = append(f.Unknown, key)
			continue
		}
		p := mods[m]
		if p == nil {
			p = &parts{}
			mods[m] = p
		}
		switch role {
		case roleA:
			if p.a != "" {
				return nil, fmt.Errorf("%s: tensor %q: module %s has two A factors (%s)", path, key, m, p.a)
			}
			p.a, p.style = key, style
		case roleB:
			if p.b != "" {
				return nil, fmt.Errorf("%s: tensor %q: module %s has two B factors (%s)", path, key, m, p.b)
			}
			p.b = key
		case roleAlpha:
			p.alpha = key
		}
	}
	styles := map[string]bool{}
	for name, p := range mods {
		if p.a == "" && p.b == "" {
			f.Unknown = append(f.Unknown, p.alpha) // an alpha alone
			continue
		}
		if p.a == "" || p.b == "" {
			have, miss := p.a, "B (up)"
			if p.a == "" {
				have, miss = p.b, "A (down)"
			}
			return nil, fmt.Errorf("%s: tensor %q: module %s has no %s factor", path, have, name, miss)
		}
		m := Module{Key: name, Style: moduleStyle(name, p.style), A: p.a, B: p.b, f: f}
		ra, k, err := factorShape(r, path, p.a)
		if err != nil {
			return nil, err
		}
		n, rb, err := factorShape(r, path, p.b)
		if err != nil {
			return nil, err
		}
		if ra != rb || ra == 0 {
			return nil, fmt.Errorf("%s: tensor %q: rank %d, but %q has rank %d (want equal and > 0)", path, p.a, ra, p.b, rb)
		}
		m.Rank, m.N, m.K = ra, n, k
		m.Alpha = float64(ra)
		if p.alpha != "" {
			a, err := readAlpha(r, path, p.alpha)
			if err != nil {
				return nil, err
			}
			m.Alpha, m.HasAlpha = a, true
		}
		styles[m.Style] = true
		f.Modules = append(f.Modules, m)
	}
	sort.Slice(f.Modules, func(i, j int) bool { return f.Modules[i].Key < f.Modules[j].Key })
	for i := range f.Modules {
		f.Modules[i].f = f
	}
	sort.Strings(f.Unknown)
	f.Format = joinStyles(styles)
	return f, nil
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

// Factors decodes the module's factors to float32: A [Rank, K] and B
// [N, Rank], newly allocated. Errors name the file and tensor, including
// the first NaN or ±Inf value.
func (m *Module) Factors() (a, b []float32, err error) {
	if a, err = m.f.decode(m.A, m.Rank*m.K, m.K); err != nil {
		return nil, nil, err
	}
	if b, err = m.f.decode(m.B, m.N*m.Rank, m.Rank); err != nil {
		return nil, nil, err
	}
	return a, b, nil
}

func (f *File) decode(name string, n, cols int) ([]float32, error) {
	info, _ := f.r.Info(name)
	raw, err := f.r.Bytes(name)
	if err != nil {
		return nil, err
	}
	v := make([]float32, n)
	if err := quant.Decode(v, string(info.DType), raw); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %v", f.Path, name, err)
	}
	if i := quant.FirstNonFinite(v); i >= 0 {
		return nil, fmt.Errorf("%s: tensor %q: non-finite value %v at [%d, %d]", f.Path, name, v[i], i/cols, i%cols)
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
