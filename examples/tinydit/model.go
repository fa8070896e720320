package tinydit

import (
	"fmt"
	"math/rand/v2"

	"github.com/nlpodyssey/spago/mat"
	"github.com/nlpodyssey/spago/nn"
	"github.com/nlpodyssey/spago/nn/linear"
)

// Model is a tiny FLUX-like diffusion transformer. Its parameters are spago
// modules (linear.Model for every linear, nn.Param for the RMSNorm
// weights) under the diffusers FluxTransformer2DModel names; the batched
// forward pass (forward.go) reads the same float32 storage.
type Model struct {
	cfg Config
	// Linears by diffusers module name ("transformer_blocks.0.attn.to_q"):
	// W [out, in], B [out], every value a bf16 value.
	Linears map[string]*linear.Model
	// Norms by tensor name ("transformer_blocks.0.attn.norm_q.weight"):
	// the RMSNorm weights [HeadDim].
	Norms map[string]*nn.Param
	// names lists every tensor in the order New creates them.
	names []string
	// layers are the logical layers of the forward pass under their
	// nunchaku (output checkpoint) names; see Layers.
	layers map[string]*Dense
	order  []string
}

// Dense is one logical linear layer of the forward pass, y = x·Wᵀ + B, in
// the form a quantized checkpoint stores it: q|k|v fused along N, the single
// blocks' proj_out split by input columns into out_proj (attention part,
// no bias) and mlp_fc2 (MLP part, with the bias).
type Dense struct {
	Name string
	N, K int
	W    []float32 // [N, K]
	B    []float32 // [N], or nil
	// Modules are the diffusers modules whose recorded input is this
	// layer's input (the calibration keys the hooks fire for).
	Modules []string
}

// Forward computes y [m, N] = x [m, K]·Wᵀ + B in float32.
func (d *Dense) Forward(y, x []float32, m int) { gemmNT(y, x, m, d.K, d.W, d.N, d.B) }

// New builds the model of cfg with its deterministic weights (package doc,
// "Weights"). It returns an error for an invalid configuration.
func New(cfg Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Model{cfg: cfg, Linears: map[string]*linear.Model{}, Norms: map[string]*nn.Param{}, layers: map[string]*Dense{}}
	D, H := cfg.Dim, cfg.MLPDim
	// Residual-stream channels carrying massive activations, shared by the
	// whole model (package doc).
	massive := pickChannels(stream(cfg.Seed, "massive", ""), max(1, D/128), D)
	embBias := func(name string, r *rand.Rand) []float32 {
		b := normalVec(r, D, 0, 0.02)
		for _, j := range massive {
			b[j] = float32(quantBF16(sign(stream(cfg.Seed, "massive-sign", fmt.Sprint(j))) * logUniform(r, 3.5, 5)))
		}
		return b
	}
	m.addLinear("x_embedder", D, cfg.InChannels, defaultWeight(cfg.InChannels), embBias)
	m.addLinear("context_embedder", D, cfg.ContextDim, defaultWeight(cfg.ContextDim), embBias)
	m.addLinear("time_text_embed.timestep_embedder.linear_1", D, timeFreqDim, defaultWeight(timeFreqDim), nil)
	m.addLinear("time_text_embed.timestep_embedder.linear_2", D, D, defaultWeight(D), nil)
	m.addLinear("time_text_embed.text_embedder.linear_1", D, cfg.PooledDim, defaultWeight(cfg.PooledDim), nil)
	m.addLinear("time_text_embed.text_embedder.linear_2", D, D, defaultWeight(D), nil)
	for i := range cfg.Double {
		b := fmt.Sprintf("transformer_blocks.%d.", i)
		m.addModulation(b+"norm1.linear", 6)
		m.addModulation(b+"norm1_context.linear", 6)
		for _, s := range []string{"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"} {
			m.addLinear(b+"attn."+s, D, D, defaultWeight(D), nil)
		}
		for _, s := range []string{"norm_q", "norm_k", "norm_added_q", "norm_added_k"} {
			m.addNorm(b + "attn." + s + ".weight")
		}
		for _, s := range []string{"ff", "ff_context"} {
			m.addMLPUp(b+s+".net.0.proj", H, D)
			m.addLinear(b+s+".net.2", D, H, defaultWeight(H), nil)
		}
		m.fuse(b+"norm1.linear", b+"norm1.linear")
		m.fuse(b+"norm1_context.linear", b+"norm1_context.linear")
		m.fuse(b+"qkv_proj", b+"attn.to_q", b+"attn.to_k", b+"attn.to_v")
		m.fuse(b+"qkv_proj_context", b+"attn.add_q_proj", b+"attn.add_k_proj", b+"attn.add_v_proj")
		m.fuse(b+"out_proj", b+"attn.to_out.0")
		m.fuse(b+"out_proj_context", b+"attn.to_add_out")
		m.fuse(b+"mlp_fc1", b+"ff.net.0.proj")
		m.fuse(b+"mlp_fc2", b+"ff.net.2")
		m.fuse(b+"mlp_context_fc1", b+"ff_context.net.0.proj")
		m.fuse(b+"mlp_context_fc2", b+"ff_context.net.2")
	}
	for i := range cfg.Single {
		b := fmt.Sprintf("single_transformer_blocks.%d.", i)
		m.addModulation(b+"norm.linear", 3)
		for _, s := range []string{"to_q", "to_k", "to_v"} {
			m.addLinear(b+"attn."+s, D, D, defaultWeight(D), nil)
		}
		m.addNorm(b + "attn.norm_q.weight")
		m.addNorm(b + "attn.norm_k.weight")
		m.addMLPUp(b+"proj_mlp", H, D)
		m.addLinear(b+"proj_out", D, D+H, defaultWeight(D+H), nil)
		m.fuse(b+"norm.linear", b+"norm.linear")
		m.fuse(b+"qkv_proj", b+"attn.to_q", b+"attn.to_k", b+"attn.to_v")
		m.fuse(b+"mlp_fc1", b+"proj_mlp")
		m.splitCols(b+"out_proj", b+"proj_out", 0, D, false)
		m.splitCols(b+"mlp_fc2", b+"proj_out", D, D+H, true)
	}
	m.addModulation("norm_out.linear", 2)
	m.addLinear("proj_out", cfg.InChannels, D, weightSpec{gain: 1, rowSigma: 0.2, colSigma: 0.25}, nil)
	for _, name := range []string{"x_embedder", "context_embedder",
		"time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
		"time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
		"norm_out.linear", "proj_out"} {
		m.fuse(name, name)
	}
	return m, nil
}

// Config returns the model's configuration.
func (m *Model) Config() Config { return m.cfg }

// Layers returns the names of the logical layers of the forward pass, in
// the order the forward pass runs them per block (outside layers last).
// They are the names a quantized checkpoint of the model uses (nunchaku's
// fused names inside blocks, diffusers names outside), so Run.Layers can
// replace any of them by its quantized form.
func (m *Model) Layers() []string { return append([]string(nil), m.order...) }

// Layer returns the logical layer name, or nil.
func (m *Model) Layer(name string) *Dense { return m.layers[name] }

// weight returns the float32 storage of a spago parameter.
func weight(p *nn.Param) []float32 { return mat.Data[float32](p.Matrix) }

// newLinear wraps W [n, k] and bias [n] into a spago linear.Model without
// gradients.
func newLinear(w, b []float32, n, k int) *linear.Model {
	return &linear.Model{
		W: nn.NewParam(mat.NewDense[float32](mat.WithShape(n, k), mat.WithBacking(w))).WithGrad(false),
		B: nn.NewParam(mat.NewDense[float32](mat.WithShape(n), mat.WithBacking(b))).WithGrad(false),
	}
}

// addLinear adds the module name with a weight [n, k] drawn from s and a
// bias from bias (N(0, 0.02²) when nil).
func (m *Model) addLinear(name string, n, k int, s weightSpec, bias func(string, *rand.Rand) []float32) {
	r := stream(m.cfg.Seed, "linear", name)
	w, _ := heavyWeight(r, n, k, s)
	var b []float32
	if bias != nil {
		b = bias(name, r)
	} else {
		b = normalVec(r, n, 0, 0.02)
	}
	m.Linears[name] = newLinear(w, b, n, k)
	m.names = append(m.names, name+".weight", name+".bias")
}

// addMLPUp adds an MLP's first linear [h, d]: max(2, h/128) hidden units
// have 3× larger weight rows and a +1 bias, so that their GELU outputs —
// the next linear's input — are large and positive in every token.
func (m *Model) addMLPUp(name string, h, d int) {
	r := stream(m.cfg.Seed, "linear", name)
	s := defaultWeight(d)
	s.rowOut, s.rowGain = max(2, h/128), 3
	w, hot := heavyWeight(r, h, d, s)
	b := normalVec(r, h, 0, 0.02)
	for _, i := range hot {
		b[i] = quantBF16(1 + 0.5*r.Float64())
	}
	m.Linears[name] = newLinear(w, b, h, d)
	m.names = append(m.names, name+".weight", name+".bias")
}

// addModulation adds an adaLN modulation linear [chunks·D, D] (norm1.linear
// and norm1_context.linear: shift, scale, gate for attention then MLP;
// single norm.linear: shift, scale, gate; norm_out.linear: scale, shift).
// Its weight is small (the modulation moves with the timestep around its
// bias). In every scale chunk max(2, D/64) channels get 1+scale = 6–24 (and
// 4× larger weight rows, so the outlier grows and shrinks with the
// timestep) and their shift ±0.5–2: the channel-wise activation outliers of
// DiTs, which the next linear's input inherits. Gate biases are 0.3–0.7.
func (m *Model) addModulation(name string, chunks int) {
	D := m.cfg.Dim
	r := stream(m.cfg.Seed, "linear", name)
	w, _ := heavyWeight(r, chunks*D, D, weightSpec{gain: 0.3, rowSigma: 0.2, colSigma: 0.2})
	b := normalVec(r, chunks*D, 0, 0.05)
	// Chunk roles in diffusers order.
	roles := map[int][]string{6: {"shift", "scale", "gate", "shift", "scale", "gate"},
		3: {"shift", "scale", "gate"}, 2: {"scale", "shift"}}[chunks]
	for c := 0; c < chunks; c++ {
		if roles[c] == "gate" {
			for j := range D {
				b[c*D+j] = quantBF16(0.3 + 0.4*r.Float64())
			}
		}
	}
	for c := 0; c < chunks; c++ {
		if roles[c] != "scale" || name == "norm_out.linear" {
			continue
		}
		shift := c - 1 // the shift chunk precedes its scale chunk
		for _, j := range pickChannels(r, max(2, D/64), D) {
			b[c*D+j] = quantBF16(logUniform(r, 2.3, 4.6) - 1) // 1+scale ∈ [5, 24]
			b[shift*D+j] = quantBF16(sign(r) * logUniform(r, -1, 1))
			row := w[(c*D+j)*D : (c*D+j+1)*D]
			for i := range row {
				row[i] = quantBF16(4 * float64(row[i]))
			}
		}
	}
	m.Linears[name] = newLinear(w, b, chunks*D, D)
	m.names = append(m.names, name+".weight", name+".bias")
}

// addNorm adds an RMSNorm weight [HeadDim]: 1 + N(0, 0.1²).
func (m *Model) addNorm(name string) {
	r := stream(m.cfg.Seed, "norm", name)
	v := normalVec(r, m.cfg.HeadDim, 1, 0.1)
	m.Norms[name] = nn.NewParam(mat.NewDense[float32](mat.WithShape(len(v)), mat.WithBacking(v))).WithGrad(false)
	m.names = append(m.names, name)
}

// fuse adds the logical layer name: the listed modules stacked along N.
func (m *Model) fuse(name string, modules ...string) {
	d := &Dense{Name: name, Modules: modules}
	for _, mod := range modules {
		l := m.Linears[mod]
		w, b := weight(l.W), weight(l.B)
		d.K = len(w) / len(b)
		d.N += len(b)
		d.W = append(d.W, w...)
		d.B = append(d.B, b...)
	}
	m.addLayer(d)
}

// splitCols adds the logical layer name: columns [lo, hi) of module, with
// its bias when withBias. It has no calibration modules of its own (the
// block's forward records the whole module input).
func (m *Model) splitCols(name, module string, lo, hi int, withBias bool) {
	l := m.Linears[module]
	w, b := weight(l.W), weight(l.B)
	n := len(b)
	k := len(w) / n
	d := &Dense{Name: name, N: n, K: hi - lo, W: make([]float32, n*(hi-lo))}
	for i := range n {
		copy(d.W[i*d.K:(i+1)*d.K], w[i*k+lo:i*k+hi])
	}
	if withBias {
		d.B = append([]float32(nil), b...)
	}
	m.addLayer(d)
}

func (m *Model) addLayer(d *Dense) {
	m.layers[d.Name] = d
	m.order = append(m.order, d.Name)
}
