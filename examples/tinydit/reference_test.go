package tinydit

import (
	"fmt"
	"math"

	"github.com/nlpodyssey/spago/ag"
	"github.com/nlpodyssey/spago/mat"
	"github.com/nlpodyssey/spago/nn/normalization/layernorm"
	"github.com/nlpodyssey/spago/nn/normalization/rmsnorm"
)

// The plain reference of the batched forward pass: the same model written
// with spago's building blocks one token vector at a time (linear.Model,
// layernorm.Model, rmsnorm.Model, ag.GELU, ag.SiLU, ag.Softmax), straight
// from the diffusers FluxTransformer2DModel code path, for one sample.
// Differences to Model.Forward: float32 rounding order, spago's GELU and
// SiLU in float64, and spago's RMSNorm x/(rms + 1e-10) instead of
// x/√(ms + 1e-6).

type spagoRef struct {
	m   *Model
	ln  *layernorm.Model
	rp  *rope
	hd  int
	rot mat.Tensor // [D, D] pair swap (x₂ᵢ, x₂ᵢ₊₁) → (−x₂ᵢ₊₁, x₂ᵢ)
}

func vec(v []float32) mat.Tensor {
	return mat.NewDense[float32](mat.WithShape(len(v)), mat.WithBacking(append([]float32(nil), v...)))
}

func newSpagoRef(m *Model) *spagoRef {
	D := m.cfg.Dim
	ln := layernorm.New[float32](D, normEps)
	one := make([]float32, D)
	for i := range one {
		one[i] = 1
	}
	ln.W.ReplaceValue(vec(one).(*mat.Dense[float32]))
	rot := make([]float32, D*D)
	for i := 0; i < D; i += 2 {
		rot[i*D+i+1] = -1
		rot[(i+1)*D+i] = 1
	}
	return &spagoRef{m: m, ln: ln, rp: newRope(m.cfg.TextTokens, m.cfg.Grid, m.cfg.HeadDim), hd: m.cfg.HeadDim,
		rot: mat.NewDense[float32](mat.WithShape(D, D), mat.WithBacking(rot))}
}

func (r *spagoRef) lin(name string, xs []mat.Tensor) []mat.Tensor {
	return r.m.Linears[name].Forward(xs...)
}

func rows(x []float32, n, k int) []mat.Tensor {
	out := make([]mat.Tensor, n)
	for i := range out {
		out[i] = vec(x[i*k : (i+1)*k])
	}
	return out
}

func chunks(x mat.Tensor, c int) []mat.Tensor { return ag.SplitVec(x, c) }

// modulate: LayerNorm(x)·(1 + scale) + shift.
func (r *spagoRef) modulate(xs []mat.Tensor, shift, scale mat.Tensor) []mat.Tensor {
	one := ag.AddScalar(scale, mat.Scalar[float32](1))
	out := make([]mat.Tensor, len(xs))
	for i, n := range r.ln.Forward(xs...) {
		out[i] = ag.Add(ag.Prod(n, one), shift)
	}
	return out
}

// qk applies the per-head RMSNorm of weight name and the rotary embedding
// of token positions pos.
func (r *spagoRef) qk(xs []mat.Tensor, name string, pos []int) []mat.Tensor {
	w := weight(r.m.Norms[name])
	norm := rmsnorm.New[float32](len(w))
	norm.W.ReplaceValue(vec(w).(*mat.Dense[float32]))
	D := r.m.cfg.Dim
	out := make([]mat.Tensor, len(xs))
	for i, x := range xs {
		var heads []mat.Tensor
		for h := 0; h < D; h += r.hd {
			heads = append(heads, norm.Forward(ag.Slice(x, h, 0, h+r.hd, 1))[0])
		}
		c, s := make([]float32, D), make([]float32, D)
		for h := 0; h < D; h += r.hd {
			for j := range r.rp.half {
				c[h+2*j], c[h+2*j+1] = r.rp.cos[pos[i]*r.rp.half+j], r.rp.cos[pos[i]*r.rp.half+j]
				s[h+2*j], s[h+2*j+1] = r.rp.sin[pos[i]*r.rp.half+j], r.rp.sin[pos[i]*r.rp.half+j]
			}
		}
		y := ag.Concat(heads...)
		out[i] = ag.Add(ag.Prod(y, vec(c)), ag.Prod(ag.Mul(r.rot, y), vec(s)))
	}
	return out
}

// attention: softmax(q·kᵀ/√hd)·v per head over the joint sequence.
func (r *spagoRef) attention(q, k, v []mat.Tensor) []mat.Tensor {
	D, hd := r.m.cfg.Dim, r.hd
	scale := mat.Scalar[float32](float32(1 / math.Sqrt(float64(hd))))
	out := make([]mat.Tensor, len(q))
	for i := range q {
		var heads []mat.Tensor
		for h := 0; h < D; h += hd {
			ks, vs := make([]mat.Tensor, len(k)), make([]mat.Tensor, len(v))
			for j := range k {
				ks[j] = ag.Slice(k[j], h, 0, h+hd, 1)
				vs[j] = ag.Slice(v[j], h, 0, h+hd, 1)
			}
			p := ag.Softmax(ag.ProdScalar(ag.Mul(ag.Stack(ks...), ag.Slice(q[i], h, 0, h+hd, 1)), scale))
			heads = append(heads, ag.Mul(ag.T(ag.Stack(vs...)), p))
		}
		out[i] = ag.Concat(heads...)
	}
	return out
}

func gate(xs, ys []mat.Tensor, g mat.Tensor) []mat.Tensor {
	out := make([]mat.Tensor, len(xs))
	for i := range xs {
		out[i] = ag.Add(xs[i], ag.Prod(ys[i], g))
	}
	return out
}

func mapGELU(xs []mat.Tensor) []mat.Tensor { return ag.Map(ag.GELU, xs) }

// forward runs sample s of the batch and returns its [ImageTokens·InChannels] output.
func (r *spagoRef) forward(in *Batch, s int) []float32 {
	cfg := r.m.cfg
	ti, tt := cfg.ImageTokens(), cfg.TextTokens
	in = in.Slice(cfg, s, s+1)
	tfreq := vec(timestepEmbedding(in.Timestep))
	temb := r.lin("time_text_embed.timestep_embedder.linear_2",
		[]mat.Tensor{ag.SiLU(r.lin("time_text_embed.timestep_embedder.linear_1", []mat.Tensor{tfreq})[0])})[0]
	pooled := r.lin("time_text_embed.text_embedder.linear_2",
		[]mat.Tensor{ag.SiLU(r.lin("time_text_embed.text_embedder.linear_1", []mat.Tensor{vec(in.Pooled)})[0])})[0]
	cond := ag.SiLU(ag.Add(temb, pooled))

	img := r.lin("x_embedder", rows(in.Latent, ti, cfg.InChannels))
	txt := r.lin("context_embedder", rows(in.Text, tt, cfg.ContextDim))
	posT, posI, posJ := make([]int, tt), make([]int, ti), make([]int, tt+ti)
	for j := range posT {
		posT[j] = j
	}
	for j := range posI {
		posI[j] = tt + j
	}
	for j := range posJ {
		posJ[j] = j
	}
	for i := range cfg.Double {
		b := fmt.Sprintf("transformer_blocks.%d.", i)
		mi := chunks(r.lin(b+"norm1.linear", []mat.Tensor{cond})[0], 6)
		mt := chunks(r.lin(b+"norm1_context.linear", []mat.Tensor{cond})[0], 6)
		nx := r.modulate(img, mi[0], mi[1])
		nc := r.modulate(txt, mt[0], mt[1])
		q := append(r.qk(r.lin(b+"attn.add_q_proj", nc), b+"attn.norm_added_q.weight", posT),
			r.qk(r.lin(b+"attn.to_q", nx), b+"attn.norm_q.weight", posI)...)
		k := append(r.qk(r.lin(b+"attn.add_k_proj", nc), b+"attn.norm_added_k.weight", posT),
			r.qk(r.lin(b+"attn.to_k", nx), b+"attn.norm_k.weight", posI)...)
		v := append(r.lin(b+"attn.add_v_proj", nc), r.lin(b+"attn.to_v", nx)...)
		o := r.attention(q, k, v)
		img = gate(img, r.lin(b+"attn.to_out.0", o[tt:]), mi[2])
		txt = gate(txt, r.lin(b+"attn.to_add_out", o[:tt]), mt[2])
		img = gate(img, r.lin(b+"ff.net.2", mapGELU(r.lin(b+"ff.net.0.proj", r.modulate(img, mi[3], mi[4])))), mi[5])
		txt = gate(txt, r.lin(b+"ff_context.net.2", mapGELU(r.lin(b+"ff_context.net.0.proj", r.modulate(txt, mt[3], mt[4])))), mt[5])
	}
	x := append(append([]mat.Tensor(nil), txt...), img...)
	for i := range cfg.Single {
		b := fmt.Sprintf("single_transformer_blocks.%d.", i)
		md := chunks(r.lin(b+"norm.linear", []mat.Tensor{cond})[0], 3)
		nx := r.modulate(x, md[0], md[1])
		mlp := mapGELU(r.lin(b+"proj_mlp", nx))
		q := r.qk(r.lin(b+"attn.to_q", nx), b+"attn.norm_q.weight", posJ)
		k := r.qk(r.lin(b+"attn.to_k", nx), b+"attn.norm_k.weight", posJ)
		o := r.attention(q, k, r.lin(b+"attn.to_v", nx))
		cat := make([]mat.Tensor, len(o))
		for j := range o {
			cat[j] = ag.Concat(o[j], mlp[j])
		}
		x = gate(x, r.lin(b+"proj_out", cat), md[2])
	}
	mo := chunks(r.lin("norm_out.linear", []mat.Tensor{cond})[0], 2) // scale, shift
	y := r.lin("proj_out", r.modulate(x[tt:], mo[1], mo[0]))
	out := make([]float32, 0, ti*cfg.InChannels)
	for _, t := range y {
		out = append(out, t.Value().Data().F32()...)
	}
	return out
}
