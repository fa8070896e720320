package lora

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/safetensors"
)

// The modules whose ΔW is not given as low-rank factors: LyCORIS LoHa and
// LoKr, and a full fine-tune's difference from its base. Their arithmetic
// is taken from
//
//	KohakuBlueleaf/LyCORIS@f49d30d:lycoris/functional/loha.py   ΔW = (w1a·w1b) ⊙ (w2a·w2b) · scale, Tucker rebuild
//	KohakuBlueleaf/LyCORIS@f49d30d:lycoris/functional/lokr.py   ΔW = w1 ⊗ w2 · scale (torch.kron)
//	KohakuBlueleaf/LyCORIS@f49d30d:lycoris/functional/general.py rebuild_tucker
//	comfyanonymous/ComfyUI@183b377:comfy/weight_adapter/loha.py  scale = α / rows(hada_w1_b), 1 without α
//	comfyanonymous/ComfyUI@e8f3bc5:comfy/weight_adapter/lokr.py  scale = α / dim, dim = rows(lokr_w2_b) when w2
//	                                                             is decomposed, else rows(lokr_w1_b); 1 when both are full or without α
//
// ComfyUI's scale is the one a LoRA is used with, so it is the one used here.

// parseLoHa reads a LoHa module's shapes: hada_w1_a [N, r], hada_w1_b
// [r, K] and the same for w2, or with Tucker cores hada_t1 [I, J],
// hada_w1_a [I, N], hada_w1_b [J, K] (einsum "i j, j r, i p -> p r").
func (m *Module) parseLoHa(r safetensors.Reader, path string, t map[role]string) error {
	m.Type, m.T = TypeLoHa, t
	if err := onlyRoles(path, m.Key, "LoHa", t, roleHadaW1A, roleHadaW1B, roleHadaW2A, roleHadaW2B, roleHadaT1, roleHadaT2); err != nil {
		return err
	}
	tucker := t[roleHadaT1] != "" || t[roleHadaT2] != ""
	need := []role{roleHadaW1A, roleHadaW1B, roleHadaW2A, roleHadaW2B}
	if tucker {
		need = append(need, roleHadaT1, roleHadaT2)
	}
	if err := needRoles(path, m.Key, t, need...); err != nil {
		return err
	}
	n1, k1, r1, err := productShape(r, path, t[roleHadaW1A], t[roleHadaW1B], t[roleHadaT1])
	if err != nil {
		return err
	}
	n2, k2, _, err := productShape(r, path, t[roleHadaW2A], t[roleHadaW2B], t[roleHadaT2])
	if err != nil {
		return err
	}
	if n1 != n2 || k1 != k2 {
		return fmt.Errorf("%s: tensor %q: w1 product is [%d %d], w2's [%d %d] (want equal)", path, t[roleHadaW2A], n1, k1, n2, k2)
	}
	m.Rank, m.N, m.K = r1, n1, k1
	return nil
}

// parseLoKr reads a LoKr module's shapes: w1 = lokr_w1 [a, c] or
// lokr_w1_a [a, r]·lokr_w1_b [r, c]; w2 = lokr_w2 [p, q], lokr_w2_a
// [p, r]·lokr_w2_b [r, q], or Tucker lokr_t2 [I, J], lokr_w2_a [I, p],
// lokr_w2_b [J, q]; ΔW = w1 ⊗ w2 is [a·p, c·q].
func (m *Module) parseLoKr(r safetensors.Reader, path string, t map[role]string) error {
	m.Type, m.T = TypeLoKr, t
	if err := onlyRoles(path, m.Key, "LoKr", t, roleLokrW1, roleLokrW1A, roleLokrW1B, roleLokrW2, roleLokrW2A, roleLokrW2B, roleLokrT2); err != nil {
		return err
	}
	var a, c, p, q int
	var err error
	rank := 0
	if t[roleLokrW1] != "" {
		if t[roleLokrW1A] != "" || t[roleLokrW1B] != "" {
			return fmt.Errorf("%s: tensor %q: module %s has lokr_w1 and lokr_w1_a/b", path, t[roleLokrW1], m.Key)
		}
		if a, c, err = factorShape(r, path, t[roleLokrW1]); err != nil {
			return err
		}
	} else {
		if err := needRoles(path, m.Key, t, roleLokrW1A, roleLokrW1B); err != nil {
			return err
		}
		if a, c, rank, err = productShape(r, path, t[roleLokrW1A], t[roleLokrW1B], ""); err != nil {
			return err
		}
	}
	if t[roleLokrW2] != "" {
		if t[roleLokrW2A] != "" || t[roleLokrW2B] != "" || t[roleLokrT2] != "" {
			return fmt.Errorf("%s: tensor %q: module %s has lokr_w2 and lokr_w2_a/b", path, t[roleLokrW2], m.Key)
		}
		if p, q, err = factorShape(r, path, t[roleLokrW2]); err != nil {
			return err
		}
	} else {
		if err := needRoles(path, m.Key, t, roleLokrW2A, roleLokrW2B); err != nil {
			return err
		}
		if p, q, rank, err = productShape(r, path, t[roleLokrW2A], t[roleLokrW2B], t[roleLokrT2]); err != nil {
			return err
		}
	}
	m.Rank, m.N, m.K = rank, a*p, c*q
	return nil
}

// parseFull reads a LyCORIS full module: diff [N, K] is ΔW
// (lycoris/modules/full.py get_diff_weight: weight·multiplier, no α).
func (m *Module) parseFull(r safetensors.Reader, path string, t map[role]string) error {
	m.Type, m.T = TypeFull, t
	if err := onlyRoles(path, m.Key, "full (diff)", t, roleFullDiff); err != nil {
		return err
	}
	n, k, err := factorShape(r, path, t[roleFullDiff])
	if err != nil {
		return err
	}
	m.N, m.K = n, k
	return nil
}

// needRoles returns an error naming the first missing factor.
func needRoles(path, module string, t map[role]string, roles ...role) error {
	for _, r := range roles {
		if t[r] == "" {
			var have []string
			for _, n := range t {
				have = append(have, n)
			}
			sort.Strings(have)
			return fmt.Errorf("%s: tensor %q: module %s has no %s factor", path, have[0], module, roleSuffix(r))
		}
	}
	return nil
}

func roleSuffix(r role) string {
	for _, s := range suffixes {
		if s.role == r {
			return strings.TrimPrefix(s.suffix, ".")
		}
	}
	return fmt.Sprintf("role %d", r)
}

// productShape returns the [n, k] shape of a·b ([n, r]·[r, k]), or with a
// Tucker core t [I, J] of aᵀ·t·b (a [I, n], b [J, k]), and r (b's rows).
func productShape(rd safetensors.Reader, path, a, b, t string) (n, k, r int, err error) {
	ar, ac, err := factorShape(rd, path, a)
	if err != nil {
		return 0, 0, 0, err
	}
	br, bc, err := factorShape(rd, path, b)
	if err != nil {
		return 0, 0, 0, err
	}
	if t == "" {
		if ac != br || br == 0 {
			return 0, 0, 0, fmt.Errorf("%s: tensor %q: [%d %d] does not multiply %q [%d %d]", path, a, ar, ac, b, br, bc)
		}
		return ar, bc, br, nil
	}
	ti, tj, err := factorShape(rd, path, t)
	if err != nil {
		return 0, 0, 0, err
	}
	if ti != ar || tj != br || ti == 0 || tj == 0 {
		return 0, 0, 0, fmt.Errorf("%s: tensor %q: Tucker core [%d %d] does not fit %q [%d %d] and %q [%d %d]", path, t, ti, tj, a, ar, ac, b, br, bc)
	}
	return ac, bc, br, nil
}

// Dense returns the module's ΔW [N, K] in float64, before Scale: the
// LoHa's (w1a·w1b) ⊙ (w2a·w2b), the LoKr's w1 ⊗ w2, the diff's
// W_finetuned − W_base. Products are summed in float64. Errors come from
// reading the tensors (NaN and ±Inf included). It panics for a plain
// LoRA module (use Factors) and for a DoRA one (use DenseDoRA).
func (m *Module) Dense() ([]float64, error) {
	if m.Dora != "" {
		panic("lora: Module.Dense of DoRA module " + m.Key)
	}
	return m.denseProduct()
}

// denseProduct is Dense without the DoRA check.
func (m *Module) denseProduct() ([]float64, error) {
	switch m.Type {
	case TypeLoHa:
		p1, err := m.product(m.T[roleHadaW1A], m.T[roleHadaW1B], m.T[roleHadaT1])
		if err != nil {
			return nil, err
		}
		p2, err := m.product(m.T[roleHadaW2A], m.T[roleHadaW2B], m.T[roleHadaT2])
		if err != nil {
			return nil, err
		}
		for i := range p1 {
			p1[i] *= p2[i]
		}
		return p1, nil
	case TypeLoKr:
		w1, a, c, err := m.factor(roleLokrW1, roleLokrW1A, roleLokrW1B, "")
		if err != nil {
			return nil, err
		}
		w2, p, q, err := m.factor(roleLokrW2, roleLokrW2A, roleLokrW2B, m.T[roleLokrT2])
		if err != nil {
			return nil, err
		}
		return kron(w1, a, c, w2, p, q), nil
	case TypeFull:
		v, err := m.f.decode(m.T[roleFullDiff], m.N*m.K, m.K)
		if err != nil {
			return nil, err
		}
		return widen64(v), nil
	case TypeDiff:
		ft, err := decodeFrom(m.f.r, m.f.Path, m.A, m.N*m.K, m.K)
		if err != nil {
			return nil, err
		}
		base, err := decodeFrom(m.f.base, m.f.basePath, m.B, m.N*m.K, m.K)
		if err != nil {
			return nil, err
		}
		d := make([]float64, len(ft))
		for i := range d {
			d[i] = float64(ft[i]) - float64(base[i])
		}
		return d, nil
	}
	panic("lora: Module.Dense of a " + m.Type + " module")
}

// factor returns a LoKr factor: the full tensor, or the product of its
// decomposition, with its shape.
func (m *Module) factor(full, fa, fb role, t string) ([]float64, int, int, error) {
	if name := m.T[full]; name != "" {
		rows, cols, err := factorShape(m.f.r, m.f.Path, name)
		if err != nil {
			return nil, 0, 0, err
		}
		v, err := m.f.decode(name, rows*cols, cols)
		if err != nil {
			return nil, 0, 0, err
		}
		return widen64(v), rows, cols, nil
	}
	n, k, _, err := productShape(m.f.r, m.f.Path, m.T[fa], m.T[fb], t)
	if err != nil {
		return nil, 0, 0, err
	}
	v, err := m.product(m.T[fa], m.T[fb], t)
	return v, n, k, err
}

// product returns a·b, or aᵀ·t·b with a Tucker core (see productShape).
func (m *Module) product(a, b, t string) ([]float64, error) {
	f := m.f
	ar, ac, err := factorShape(f.r, f.Path, a)
	if err != nil {
		return nil, err
	}
	br, bc, err := factorShape(f.r, f.Path, b)
	if err != nil {
		return nil, err
	}
	av, err := f.decode(a, ar*ac, ac)
	if err != nil {
		return nil, err
	}
	bv, err := f.decode(b, br*bc, bc)
	if err != nil {
		return nil, err
	}
	if t == "" {
		return matmul(widen64(av), widen64(bv), ar, ac, bc), nil
	}
	tv, err := f.decode(t, ar*br, br)
	if err != nil {
		return nil, err
	}
	tb := matmul(widen64(tv), widen64(bv), ar, br, bc)                 // [I, K]
	return matmul(transpose(widen64(av), ar, ac), tb, ac, ar, bc), nil // [N, K]
}

// matmul returns a [m, r] · b [r, n] in float64.
func matmul(a, b []float64, m, r, n int) []float64 {
	c := make([]float64, m*n)
	for i := 0; i < m; i++ {
		ci := c[i*n : (i+1)*n]
		for j := 0; j < r; j++ {
			v := a[i*r+j]
			if v == 0 {
				continue
			}
			for k, w := range b[j*n : (j+1)*n] {
				ci[k] += v * w
			}
		}
	}
	return c
}

// transpose returns the [cols, rows] transpose of a [rows, cols].
func transpose(a []float64, rows, cols int) []float64 {
	t := make([]float64, len(a))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			t[j*rows+i] = a[i*cols+j]
		}
	}
	return t
}

// kron returns the Kronecker product of w1 [a, c] and w2 [p, q]:
// [a·p, c·q] with element (i·p+k, j·q+l) = w1[i, j]·w2[k, l] (torch.kron).
func kron(w1 []float64, a, c int, w2 []float64, p, q int) []float64 {
	n, k := a*p, c*q
	out := make([]float64, n*k)
	for i := 0; i < a; i++ {
		for j := 0; j < c; j++ {
			v := w1[i*c+j]
			for kk := 0; kk < p; kk++ {
				row := out[(i*p+kk)*k+j*q : (i*p+kk)*k+(j+1)*q]
				for l, w := range w2[kk*q : (kk+1)*q] {
					row[l] = v * w
				}
			}
		}
	}
	return out
}

func widen64(v []float32) []float64 {
	d := make([]float64, len(v))
	for i, x := range v {
		d[i] = float64(x)
	}
	return d
}

// OpenDiff opens a full fine-tune and its base (single .safetensors files,
// sharded folders or diffusers folders: safetensors.OpenCheckpoint) as a
// File of TypeDiff modules: one per 2-D float tensor "<m>.weight" present
// in both with the same shape whose bytes differ, ΔW = W_finetuned −
// W_base. A 2-D tensor in only one of them, or with another shape, is an
// error naming it; other tensors that differ (biases, norm scales) go to
// Unknown, since no low-rank branch or weight merge carries them. SHA256
// hashes the fine-tune's files in order.
func OpenDiff(finetuned, base string) (*File, error) {
	sum, err := hashCheckpoint(finetuned)
	if err != nil {
		return nil, err
	}
	ft, err := safetensors.OpenCheckpoint(finetuned)
	if err != nil {
		return nil, err
	}
	bs, err := safetensors.OpenCheckpoint(base)
	if err != nil {
		ft.Close()
		return nil, err
	}
	f := &File{Path: finetuned, SHA256: sum, Format: StyleDiff, r: ft, base: bs, basePath: base}
	if err := f.diffModules(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (f *File) diffModules() error {
	for _, name := range f.r.Names() {
		fi, _ := f.r.Info(name)
		bi, ok := f.base.Info(name)
		if !ok {
			if len(fi.Shape) == 2 {
				return fmt.Errorf("%s: tensor %q is not in the base %s", f.Path, name, f.basePath)
			}
			f.Unknown = append(f.Unknown, name)
			continue
		}
		if !slices.Equal(fi.Shape, bi.Shape) {
			return fmt.Errorf("%s: tensor %q is %v, in the base %s %v", f.Path, name, fi.Shape, f.basePath, bi.Shape)
		}
		fb, err := f.r.Bytes(name)
		if err != nil {
			return err
		}
		bb, err := f.base.Bytes(name)
		if err != nil {
			return err
		}
		if fi.DType == bi.DType && bytes.Equal(fb, bb) {
			continue // unchanged
		}
		mod, isWeight := strings.CutSuffix(name, ".weight")
		if !isWeight || len(fi.Shape) != 2 || !floatDType(fi.DType) || !floatDType(bi.DType) {
			f.Unknown = append(f.Unknown, name)
			continue
		}
		const limit = 1 << 24
		if fi.Shape[0] > limit || fi.Shape[1] > limit {
			return fmt.Errorf("%s: tensor %q: shape %v is too large", f.Path, name, fi.Shape)
		}
		f.Modules = append(f.Modules, Module{Key: mod, Style: StyleDiff, Type: TypeDiff,
			N: int(fi.Shape[0]), K: int(fi.Shape[1]), A: name, B: name, f: f})
	}
	for _, name := range f.base.Names() {
		if _, ok := f.r.Info(name); !ok {
			if bi, _ := f.base.Info(name); len(bi.Shape) == 2 {
				return fmt.Errorf("%s: base tensor %q is not in the fine-tune %s", f.basePath, name, f.Path)
			}
		}
	}
	sort.Slice(f.Modules, func(i, j int) bool { return f.Modules[i].Key < f.Modules[j].Key })
	sort.Strings(f.Unknown)
	return nil
}

// hashCheckpoint returns the hex SHA-256 of a checkpoint's files, in the
// order safetensors.CheckpointFiles lists them (one file: its own hash).
func hashCheckpoint(path string) (string, error) {
	files, err := safetensors.CheckpointFiles(path)
	if err != nil {
		return "", err
	}
	return hashFile(files...)
}
