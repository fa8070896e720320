package tinydit

import (
	"fmt"
	"math"
)

// Linear is a layer y [m, N] = f(x [m, K]): a Dense layer of the model, or
// a quantized replacement (an SVDQuant layer's emulation, a W4A16 layer).
type Linear interface {
	Forward(y, x []float32, m int)
}

// Hook receives the input x [rows, k] of a diffusers module just before the
// module runs (rows are the tokens of every sample of the batch). It must
// not keep or modify x. The single blocks' proj_out is reported with its
// whole input, attention ‖ MLP ([rows, D+H]), although the forward pass
// runs it as two layers.
type Hook func(module string, x []float32, rows, k int)

// Run configures one forward pass.
type Run struct {
	// Layers replaces logical layers (Model.Layers names) by other
	// implementations; layers not in the map run as Dense in float32.
	Layers map[string]Linear
	// Hook, when set, is called for every module input.
	Hook Hook
}

// pass is the state of one forward pass over a batch of b samples.
type pass struct {
	m   *Model
	run Run
	b   int
}

// linear runs the logical layer name on x [rows, K] and returns y [rows, N],
// calling the hook for its modules first.
func (p *pass) linear(name string, x []float32, rows int) []float32 {
	d := p.m.layers[name]
	if d == nil {
		panic(fmt.Sprintf("tinydit: no layer %q", name))
	}
	if len(x) != rows*d.K {
		panic(fmt.Sprintf("tinydit: layer %s: input has %d values, want %d×%d", name, len(x), rows, d.K))
	}
	if p.run.Hook != nil {
		for _, mod := range d.Modules {
			p.run.Hook(mod, x, rows, d.K)
		}
	}
	y := make([]float32, rows*d.N)
	if l, ok := p.run.Layers[name]; ok {
		l.Forward(y, x, rows)
	} else {
		d.Forward(y, x, rows)
	}
	return y
}

// Forward runs the model on the batch and returns the predicted velocity
// [b.N, ImageTokens, InChannels] (row-major, one row per image token). It
// panics (prefix "tinydit:") when the batch does not match the
// configuration. Samples do not interact: the result of a sample does not
// depend on the batch it is in, up to float32 rounding of the GEMMs.
func (m *Model) Forward(in *Batch, run Run) []float32 {
	cfg := m.cfg
	if err := in.check(cfg); err != nil {
		panic(err.Error())
	}
	p := &pass{m: m, run: run, b: in.N}
	B, D := in.N, cfg.Dim
	ti, tt := cfg.ImageTokens(), cfg.TextTokens

	// Conditioning: temb = timestep MLP + pooled-text MLP, then SiLU, the
	// input of every modulation linear.
	h := p.linear("time_text_embed.timestep_embedder.linear_1", timestepEmbedding(in.Timestep), B)
	temb := p.linear("time_text_embed.timestep_embedder.linear_2", silu(h), B)
	h = p.linear("time_text_embed.text_embedder.linear_1", in.Pooled, B)
	for i, v := range p.linear("time_text_embed.text_embedder.linear_2", silu(h), B) {
		temb[i] += v
	}
	cond := silu(temb) // [B, D]

	img := p.linear("x_embedder", in.Latent, B*ti)     // [B·ti, D]
	txt := p.linear("context_embedder", in.Text, B*tt) // [B·tt, D]
	rp := newRope(tt, cfg.Grid, cfg.HeadDim)
	for i := range cfg.Double {
		img, txt = p.double(i, img, txt, cond, rp)
	}
	joint := joinTokens(txt, img, B, tt, ti, D)
	for i := range cfg.Single {
		joint = p.single(i, joint, cond, rp)
	}
	_, img = splitTokens(joint, B, tt, ti, D)

	mod := p.linear("norm_out.linear", cond, B) // [B, 2D]: scale, shift
	x := make([]float32, len(img))
	modulate(x, img, B, ti, D, mod, 2*D, D, 0)
	return p.linear("proj_out", x, B*ti)
}

// double runs transformer_blocks.i (FLUX's joint block) on the image and
// text streams.
func (p *pass) double(i int, img, txt, cond []float32, rp *rope) ([]float32, []float32) {
	cfg := p.m.cfg
	B, D, hd := p.b, cfg.Dim, cfg.HeadDim
	ti, tt := cfg.ImageTokens(), cfg.TextTokens
	pre := fmt.Sprintf("transformer_blocks.%d.", i)
	// Chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
	mi := p.linear(pre+"norm1.linear", cond, B)
	mt := p.linear(pre+"norm1_context.linear", cond, B)

	nx := make([]float32, len(img))
	modulate(nx, img, B, ti, D, mi, 6*D, 0, D)
	nc := make([]float32, len(txt))
	modulate(nc, txt, B, tt, D, mt, 6*D, 0, D)
	qkvI := p.linear(pre+"qkv_proj", nx, B*ti)         // [B·ti, 3D]
	qkvT := p.linear(pre+"qkv_proj_context", nc, B*tt) // [B·tt, 3D]
	norms := p.m.Norms
	rmsNormHeads(qkvI, B*ti, 3*D, 0, D, hd, weight(norms[pre+"attn.norm_q.weight"]))
	rmsNormHeads(qkvI, B*ti, 3*D, D, D, hd, weight(norms[pre+"attn.norm_k.weight"]))
	rmsNormHeads(qkvT, B*tt, 3*D, 0, D, hd, weight(norms[pre+"attn.norm_added_q.weight"]))
	rmsNormHeads(qkvT, B*tt, 3*D, D, D, hd, weight(norms[pre+"attn.norm_added_k.weight"]))
	q, k, v := jointQKV(qkvT, qkvI, B, tt, ti, D, hd, rp)
	o := make([]float32, len(q))
	attention(o, q, k, v, B, tt+ti, D, hd)
	oT, oI := splitTokens(o, B, tt, ti, D)

	img = p.residual(img, p.linear(pre+"out_proj", oI, B*ti), mi, ti, 6*D, 2*D)
	txt = p.residual(txt, p.linear(pre+"out_proj_context", oT, B*tt), mt, tt, 6*D, 2*D)

	modulate(nx, img, B, ti, D, mi, 6*D, 3*D, 4*D)
	f := p.linear(pre+"mlp_fc1", nx, B*ti)
	gelu(f)
	img = p.residual(img, p.linear(pre+"mlp_fc2", f, B*ti), mi, ti, 6*D, 5*D)
	modulate(nc, txt, B, tt, D, mt, 6*D, 3*D, 4*D)
	f = p.linear(pre+"mlp_context_fc1", nc, B*tt)
	gelu(f)
	txt = p.residual(txt, p.linear(pre+"mlp_context_fc2", f, B*tt), mt, tt, 6*D, 5*D)
	return img, txt
}

// single runs single_transformer_blocks.i on the joint sequence.
func (p *pass) single(i int, x, cond []float32, rp *rope) []float32 {
	cfg := p.m.cfg
	B, D, H, hd := p.b, cfg.Dim, cfg.MLPDim, cfg.HeadDim
	t := cfg.Tokens()
	pre := fmt.Sprintf("single_transformer_blocks.%d.", i)
	mod := p.linear(pre+"norm.linear", cond, B) // [B, 3D]: shift, scale, gate
	nx := make([]float32, len(x))
	modulate(nx, x, B, t, D, mod, 3*D, 0, D)
	qkv := p.linear(pre+"qkv_proj", nx, B*t) // [B·t, 3D]
	mlp := p.linear(pre+"mlp_fc1", nx, B*t)  // [B·t, H]
	gelu(mlp)
	rmsNormHeads(qkv, B*t, 3*D, 0, D, hd, weight(p.m.Norms[pre+"attn.norm_q.weight"]))
	rmsNormHeads(qkv, B*t, 3*D, D, D, hd, weight(p.m.Norms[pre+"attn.norm_k.weight"]))
	q, k, v := splitQKV(qkv, B*t, D)
	rp.applyAll(q, k, B, t, D, hd)
	o := make([]float32, len(q))
	attention(o, q, k, v, B, t, D, hd)
	if p.run.Hook != nil {
		cat := make([]float32, B*t*(D+H))
		for r := range B * t {
			copy(cat[r*(D+H):], o[r*D:(r+1)*D])
			copy(cat[r*(D+H)+D:], mlp[r*H:(r+1)*H])
		}
		p.run.Hook(pre+"proj_out", cat, B*t, D+H)
	}
	y := p.linear(pre+"out_proj", o, B*t)
	for j, v := range p.linear(pre+"mlp_fc2", mlp, B*t) {
		y[j] += v
	}
	return p.residual(x, y, mod, t, 3*D, 2*D)
}

// residual returns x + gate·y for the rows [b·t, D] of x and y, the gate
// of sample s at mod[s·stride + off …].
func (p *pass) residual(x, y, mod []float32, t, stride, off int) []float32 {
	D := p.m.cfg.Dim
	for r := range p.b * t {
		g := mod[(r/t)*stride+off : (r/t)*stride+off+D]
		row, yr := x[r*D:(r+1)*D], y[r*D:(r+1)*D]
		for j := range row {
			row[j] += g[j] * yr[j]
		}
	}
	return x
}

// jointQKV builds the joint q, k, v [b·(tt+ti), D] (text tokens first in
// each sample) from the fused text and image projections [rows, 3D], with
// the rotary embedding applied to q and k.
func jointQKV(qkvT, qkvI []float32, b, tt, ti, d, hd int, rp *rope) (q, k, v []float32) {
	t := tt + ti
	q, k, v = make([]float32, b*t*d), make([]float32, b*t*d), make([]float32, b*t*d)
	for s := range b {
		for j := range t {
			var src []float32
			if j < tt {
				src = qkvT[(s*tt+j)*3*d : (s*tt+j+1)*3*d]
			} else {
				src = qkvI[(s*ti+j-tt)*3*d : (s*ti+j-tt+1)*3*d]
			}
			r := (s*t + j) * d
			copy(q[r:r+d], src[:d])
			copy(k[r:r+d], src[d:2*d])
			copy(v[r:r+d], src[2*d:])
		}
	}
	rp.applyAll(q, k, b, t, d, hd)
	return q, k, v
}

// splitQKV splits rows [n, 3D] into q, k, v [n, D].
func splitQKV(qkv []float32, n, d int) (q, k, v []float32) {
	q, k, v = make([]float32, n*d), make([]float32, n*d), make([]float32, n*d)
	for r := range n {
		src := qkv[r*3*d : (r+1)*3*d]
		copy(q[r*d:], src[:d])
		copy(k[r*d:], src[d:2*d])
		copy(v[r*d:], src[2*d:])
	}
	return q, k, v
}

// joinTokens concatenates per sample the text rows [b·tt, d] and the image
// rows [b·ti, d] into [b·(tt+ti), d].
func joinTokens(txt, img []float32, b, tt, ti, d int) []float32 {
	t := tt + ti
	out := make([]float32, b*t*d)
	for s := range b {
		copy(out[s*t*d:], txt[s*tt*d:(s+1)*tt*d])
		copy(out[(s*t+tt)*d:], img[s*ti*d:(s+1)*ti*d])
	}
	return out
}

// splitTokens is the inverse of joinTokens.
func splitTokens(x []float32, b, tt, ti, d int) (txt, img []float32) {
	t := tt + ti
	txt, img = make([]float32, b*tt*d), make([]float32, b*ti*d)
	for s := range b {
		copy(txt[s*tt*d:(s+1)*tt*d], x[s*t*d:])
		copy(img[s*ti*d:(s+1)*ti*d], x[(s*t+tt)*d:])
	}
	return txt, img
}

// finite reports whether every value of x is finite.
func finite(x []float32) bool {
	for _, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return false
		}
	}
	return true
}
