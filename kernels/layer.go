package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"

	"github.com/svdq/svdq/quant"
)

// Variant selects the kernels Forward runs.
type Variant int

const (
	// Fused: one activation pass (quantize + low-rank down projection), one
	// GEMM pass with the low-rank up projection and bias in its epilogue.
	Fused Variant = iota
	// NoLowRank: quantize + GEMM + bias without the low-rank branch (for
	// timing; its result is not the layer's output).
	NoLowRank
	// Unfused: quantize; a separate down-projection pass over x; GEMM +
	// bias; a separate pass y += lr·upᵀ that reads and rewrites y.
	Unfused
	// Reference: the activation pass, then the scalar reference GEMM
	// (cuda/gemm_ref.cuh).
	Reference
)

var variantNames = [...]string{"fused", "w4a4", "unfused", "reference"}

func (v Variant) String() string {
	if v >= 0 && int(v) < len(variantNames) {
		return variantNames[v]
	}
	return fmt.Sprintf("Variant(%d)", int(v))
}

// actMaxR is the rank one activation launch of the _qd / _d kernels covers
// (RTN = 8 rank tiles in cuda/act_quant.cuh).
const actMaxR = 128

// Layer is a packed layer uploaded to a Device.
type Layer struct {
	d                              *Device
	meta                           Packed // shapes and flags; byte slices nil
	qw, ws, bias, smooth, down, up uint64
}

// Upload validates p and copies its tensors, as stored, to the device.
func (d *Device) Upload(p *Packed) (*Layer, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	l := &Layer{d: d, meta: *p}
	m := &l.meta
	m.QWeight, m.WScales, m.Bias, m.Smooth, m.Down, m.Up = nil, nil, nil, nil, nil, nil
	err := d.do(func() error {
		for _, t := range []struct {
			dst *uint64
			src []byte
		}{{&l.qw, p.QWeight}, {&l.ws, p.WScales}, {&l.bias, p.Bias},
			{&l.smooth, p.Smooth}, {&l.down, p.Down}, {&l.up, p.Up}} {
			ptr, err := d.upload(t.src)
			if err != nil {
				l.freeLocked()
				return err
			}
			*t.dst = ptr
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Free releases the layer's device memory.
func (l *Layer) Free() error { return l.d.do(func() error { return l.freeLocked() }) }

func (l *Layer) freeLocked() error {
	var first error
	for _, p := range []*uint64{&l.qw, &l.ws, &l.bias, &l.smooth, &l.down, &l.up} {
		if err := l.d.free(*p); err != nil && first == nil {
			first = err
		}
		*p = 0
	}
	return first
}

// work holds the per-call device buffers for m input rows.
type work struct {
	m, mpad           int
	x, act, ascale, y uint64
	lr                *lowRankBufs // shared by copies of the work (the benchmark's)
}

// lract is the low-rank buffer of the current (or last) call, one of lr's two.
func (w *work) lract() uint64 { return w.lr.ptr[w.lr.used] }

// lowRankBufs are two buffers for the FP32 down-projection sums x·proj_down.
// With more than one K split the activation blocks add into the buffer, so
// it must start at zero: zeroing it is a separate memset, a kernel of its
// own on the critical path of a small layer. The fused wgmma GEMM instead
// zeroes the other buffer for the next call (after reading its own), so
// calls alternate between the two and a memset is needed only when neither
// is known to be zero. zero[i] counts the leading float32 of buffer i known
// to be zero; used is the buffer the last call wrote.
type lowRankBufs struct {
	ptr  [2]uint64
	zero [2]int
	used int
}

// lowRankPlan is what one call does with the buffers: write buffer cur
// (memset first when it must start at zero and is not known to be), and
// have the GEMM zero buffer next (-1: none).
type lowRankPlan struct {
	cur    int
	memset bool
	next   int
}

// plan chooses the buffers for a call that needs n leading zero floats in
// its buffer (0 when it overwrites them) and whose GEMM can zero the other
// (gemmZeroes), and records the call's effect: the buffer written is no
// longer zero; the other is zero over n floats once the GEMM zeroed it.
func (b *lowRankBufs) plan(n int, gemmZeroes bool) lowRankPlan {
	pl := lowRankPlan{cur: b.used ^ 1, next: -1}
	if n > 0 {
		switch {
		case b.zero[pl.cur] >= n:
		case b.zero[b.used] >= n:
			pl.cur = b.used
		default:
			pl.memset = true
		}
	}
	o := pl.cur ^ 1
	if gemmZeroes && n > 0 && b.zero[o] < n {
		pl.next = o
		b.zero[o] = n
	}
	b.zero[pl.cur], b.used = 0, pl.cur
	return pl
}

// GemmEnv names an environment variable that, set to "mma" when Open runs,
// makes a Hopper card run the mma.sync GEMM kernels (svdq_gemm_*, the 4-bit
// codes unpacked to INT8 in registers) instead of the wgmma ones
// (svdq_wg_*), to compare.
const GemmEnv = "SVDQ_GEMM"

// wg reports whether the layer's GEMM runs on the Hopper wgmma kernels
// (cuda/gemm_w4a4_sm90.cuh): INT4 layers on a Device that uses them.
func (l *Layer) wg() bool { return l.meta.Precision != quant.NVFP4 && l.d.WGMMA }

// padRows returns m padded to the GEMM's token tiles: 64 rows; for the
// wgmma kernels 128, or 256 where the n256x2 tile runs.
func (l *Layer) padRows(m int) int {
	if l.wg() {
		return roundUp(m, max(128, l.wgTile(m).m))
	}
	return roundUp(m, 64)
}

// wgTile is the wgmma GEMM's tile for m rows (TileEnv's choice when set
// and valid for the layer).
func (l *Layer) wgTile(m int) gemmTile {
	npad := l.meta.NPad()
	if o, ok := wgTileOverride(); ok && npad%o.n == 0 {
		return o
	}
	return pickWGTile(m, npad, l.d.SMs)
}

// workSizes returns the padded row count and the byte sizes of the work
// buffers for m rows: x [mpad, KPad] 16-bit, act codes [mpad, KPad/2] (the
// wgmma kernels' byte-per-code act8 layout: [mpad, KPad]), act scales (INT4 16-bit
// [KPad/64, mpad], NVFP4 float [KPad/16, mpad]), lract float [mpad, R],
// y 16-bit [m, NPad]. M is padded by padRows.
func (l *Layer) workSizes(m int) (mpad, x, act, ascale, lract, y int) {
	kpad, npad := l.meta.KPad(), l.meta.NPad()
	mpad = l.padRows(m)
	ascale = kpad / 64 * mpad * 2
	if l.meta.Precision == quant.NVFP4 {
		ascale = kpad / 16 * mpad * 4
	}
	act = mpad * kpad / 2
	if l.wg() {
		act = mpad * kpad
	}
	return mpad, mpad * kpad * 2, act, ascale, mpad * l.meta.R * 4, m * npad * 2
}

// newWork allocates the buffers (device goroutine); x and both low-rank
// buffers are zeroed.
func (l *Layer) newWork(m int) (*work, error) {
	mpad, xs, as, ss, ls, ys := l.workSizes(m)
	w := &work{m: m, mpad: mpad, lr: &lowRankBufs{}}
	for _, b := range []struct {
		dst  *uint64
		size int
	}{{&w.x, xs}, {&w.act, as}, {&w.ascale, ss}, {&w.lr.ptr[0], ls}, {&w.lr.ptr[1], ls}, {&w.y, ys}} {
		p, err := l.d.alloc(b.size)
		if err != nil {
			w.free(l.d)
			return nil, err
		}
		*b.dst = p
	}
	for _, b := range []struct {
		p    uint64
		size int
	}{{w.x, xs}, {w.lr.ptr[0], ls}, {w.lr.ptr[1], ls}} {
		if err := l.d.memset(b.p, 0, b.size); err != nil {
			w.free(l.d)
			return nil, err
		}
	}
	w.lr.zero = [2]int{ls / 4, ls / 4}
	return w, nil
}

func (w *work) free(d *Device) {
	for _, p := range []*uint64{&w.x, &w.act, &w.ascale, &w.lr.ptr[0], &w.lr.ptr[1], &w.y} {
		d.free(*p)
		*p = 0
	}
}

// kernelNames returns the names of the kernels a variant launches.
func (l *Layer) precName() string {
	switch {
	case l.meta.Precision == quant.NVFP4:
		return "nvfp4"
	case l.meta.Unsigned:
		return "int4u"
	}
	return "int4"
}

func (l *Layer) dtName() string {
	if l.meta.DType == quant.F16 {
		return "f16"
	}
	return "bf16"
}

// enqueue launches the kernels of variant v on w (device goroutine), no sync.
func (l *Layer) enqueue(w *work, v Variant) error {
	p := &l.meta
	if v < Fused || v > Reference {
		return fmt.Errorf("kernels: unknown variant %d", int(v))
	}
	d := l.d
	prec, dt := l.precName(), l.dtName()
	mpad, npad, kpad, r := int32(w.mpad), int32(p.NPad()), int32(p.KPad()), int32(p.R)
	splits, ktpb := actSplits(w.mpad, int(kpad), d.SMs)
	actGrid := [3]uint32{uint32(w.mpad / 16), uint32(splits), 1}
	blk := [3]uint32{128, 1, 1}
	wg := l.wg() && v != Reference // the reference kernel reads the packed act layout
	need := 0                      // leading zero floats the low-rank buffer needs
	if splits > 1 && v != NoLowRank && p.R > 0 {
		need = w.mpad * p.R // the blocks add into it
	}
	lp := w.lr.plan(need, wg && v == Fused)
	lract := w.lract()
	var lzero uint64 // the buffer the fused wgmma GEMM zeroes for the next call
	if lp.next >= 0 {
		lzero = w.lr.ptr[lp.next]
	}
	if lp.memset {
		if err := d.memset(lract, 0, need*4); err != nil {
			return err
		}
	}
	act := func(name string, rt0 int) error {
		return d.launch(name, actGrid, blk, w.x, l.smooth, l.down, w.act, w.ascale, lract, mpad, kpad, r,
			int32(rt0), int32(ktpb))
	}
	// The activation pass, and the down projection fused into it or not.
	// Ranks up to 32 use the lighter kernels covering 32 columns a launch.
	fuseDown := (v == Fused || v == Reference) && p.R > 0
	cover, rsuf := actMaxR, ""
	if p.R <= 32 {
		cover, rsuf = 32, "32"
	}
	mode := "_q"
	if fuseDown {
		mode = "_qd" + rsuf
	}
	actPfx := "svdq_act_"
	if wg {
		actPfx = "svdq_act8_"
	}
	if err := act(actPfx+prec+"_"+dt+mode, 0); err != nil {
		return err
	}
	first := cover / 16 // rank tiles the first launch covered
	if !fuseDown {
		first = 0
	}
	if v != NoLowRank {
		for rt0 := first; rt0*16 < p.R; rt0 += cover / 16 {
			if err := act("svdq_act_"+dt+"_d"+rsuf, rt0); err != nil {
				return err
			}
		}
	}
	tile := pickTile(w.mpad, int(npad), d.SMs)
	if t, ok := tileOverride(); ok {
		tile = t
	}
	gemm := func(name string, extra ...any) error {
		grid := [3]uint32{uint32(w.mpad / tile.m), uint32(int(npad) / tile.n), 1}
		args := append([]any{w.act, w.ascale, l.qw, l.ws, lract, l.up, l.bias, w.y, int32(w.m), mpad, npad, kpad, r},
			extra...)
		return d.launch(name+"_"+tile.name, grid, blk, args...)
	}
	gemm4 := func(mode string) error { // the 4-bit GEMM (+ bias, + low-rank when fused)
		if p.Precision == quant.NVFP4 { // the FP16 mma kernels (cuda/gemm_nvfp4.cuh)
			return gemm("svdq_gemm_"+prec+"_"+dt+"_"+mode, p.WTScale)
		}
		if !wg {
			return gemm("svdq_gemm_" + prec + "_" + dt + "_" + mode)
		}
		t := l.wgTile(w.m)
		if w.mpad%t.m != 0 { // work sized for another tile (cannot happen: padRows uses wgTile)
			return fmt.Errorf("kernels: %d padded rows do not fit the %s tile", w.mpad, t.name)
		}
		grid := [3]uint32{uint32(w.mpad / t.m), uint32(int(npad) / t.n), 1}
		return d.launchSmem("svdq_wg_"+prec+"_"+dt+"_"+mode+"_"+t.name, grid, [3]uint32{uint32(t.threads), 1, 1},
			uint32(t.smem), w.act, w.ascale, l.qw, l.ws, lract, l.up, l.bias, w.y, int32(w.m), mpad, npad, kpad, r,
			lzero)
	}
	switch v {
	case Fused:
		return gemm4("fused")
	case NoLowRank:
		return gemm4("nolora")
	case Unfused:
		if err := gemm4("nolora"); err != nil {
			return err
		}
		if p.R == 0 {
			return nil
		}
		return gemm("svdq_gemm_" + dt + "_upadd")
	}
	total := w.m * int(npad)
	grid := [3]uint32{uint32((total + 255) / 256), 1, 1}
	return d.launch("svdq_ref_"+prec+"_"+dt, grid, [3]uint32{256, 1, 1}, w.act, w.ascale, l.qw, l.ws,
		p.WTScale, lract, l.up, l.bias, w.y, int32(w.m), mpad, npad, kpad, r)
}

// Result is one GPU run of a layer on m rows.
type Result struct {
	M       int
	Variant Variant // the kernels that ran (Verify's tolerance depends on it)
	// Y is the output [M, N], the 16-bit values widened to float32.
	Y []float32
	// LowRank is the FP32 down projection x·proj_down [M, R] the GPU
	// computed (R the stored, padded rank; nil for NoLowRank): the one
	// intermediate whose FP32 summation order the GPU does not share with
	// the emulation (see Verify).
	LowRank []float32
}

// Run runs the layer on the GPU with variant v: x is [m, K], rounded to the
// model dtype before upload (the engine feeds 16-bit activations). Fused,
// Unfused and Reference compute the function of quant.Layer.Forward;
// NoLowRank leaves the branch out.
// Errors name the failing CUDA call. It panics if x is shorter than m·K.
func (l *Layer) Run(x []float32, m int, v Variant) (*Result, error) {
	p := &l.meta
	if m <= 0 || len(x) < m*p.K {
		panic(fmt.Sprintf("kernels: Run with m=%d, len(x)=%d for a %d×%d layer", m, len(x), p.N, p.K))
	}
	kpad, npad := p.KPad(), p.NPad()
	xb := make([]byte, m*kpad*2)
	for i := 0; i < m; i++ {
		copy(xb[i*kpad*2:], p.DType.Encode(x[i*p.K:(i+1)*p.K]))
	}
	yb := make([]byte, m*npad*2)
	var lb []byte
	if v != NoLowRank && p.R > 0 {
		lb = make([]byte, m*p.R*4)
	}
	err := l.d.do(func() error {
		w, err := l.newWork(m)
		if err != nil {
			return err
		}
		defer w.free(l.d)
		if err := l.d.drv.check("cuMemcpyHtoD_v2", l.d.drv.cuMemcpyHtoD(w.x, ptrOf(xb), uint64(len(xb)))); err != nil {
			return err
		}
		if err := l.enqueue(w, v); err != nil {
			return err
		}
		if err := l.d.sync(); err != nil {
			return err
		}
		if err := l.d.download(yb, w.y); err != nil {
			return err
		}
		return l.d.download(lb, w.lract())
	})
	if err != nil {
		return nil, err
	}
	res := &Result{M: m, Variant: v, Y: make([]float32, m*p.N)}
	le := binary.LittleEndian
	for i := 0; i < m; i++ {
		for n := 0; n < p.N; n++ {
			u := le.Uint16(yb[(i*npad+n)*2:])
			if p.DType == quant.F16 {
				res.Y[i*p.N+n] = quant.F16ToF32(u)
			} else {
				res.Y[i*p.N+n] = quant.BF16ToF32(u)
			}
		}
	}
	if lb != nil {
		res.LowRank = make([]float32, m*p.R)
		for i := range res.LowRank {
			res.LowRank[i] = math.Float32frombits(le.Uint32(lb[4*i:]))
		}
	}
	return res, nil
}

// Forward is Run writing the output into y [m, N].
func (l *Layer) Forward(y, x []float32, m int, v Variant) error {
	if len(y) < m*l.meta.N {
		panic(fmt.Sprintf("kernels: Forward with len(y)=%d for m=%d, N=%d", len(y), m, l.meta.N))
	}
	res, err := l.Run(x, m, v)
	if err != nil {
		return err
	}
	copy(y, res.Y)
	return nil
}

// actSplits returns how many blocks share the K groups of a 16-row tile in
// the activation pass, and the groups each takes (a multiple of 4, one per
// warp in turn): enough blocks for 4 per multiprocessor, at least 4 groups
// a block.
func actSplits(mpad, kpad, sms int) (splits, ktpb int) {
	kt := kpad / 64
	tiles := mpad / 16
	splits = min(max((4*sms+tiles-1)/tiles, 1), (kt+3)/4)
	ktpb = roundUp((kt+splits-1)/splits, 4)
	return (kt + ktpb - 1) / ktpb, ktpb
}

// gemmTile is one block tile of the fast GEMM kernels.
type gemmTile struct {
	name string
	m, n int
	// wgmma kernels: block size and dynamic shared memory bytes.
	threads, smem int
}

// gemmTiles are the compiled tiles, largest first (more reuse per load).
var gemmTiles = []gemmTile{{name: "t64x128", m: 64, n: 128}, {name: "t32x128", m: 32, n: 128}, {name: "t32x64", m: 32, n: 64}}

// pickTile returns the largest tile that still gives at least 2 blocks per
// multiprocessor (the smallest when none does): K is never split, so small
// M needs small tiles to fill the GPU.
func pickTile(mpad, npad, sms int) gemmTile {
	for _, t := range gemmTiles {
		if (mpad/t.m)*(npad/t.n) >= 2*sms {
			return t
		}
	}
	return gemmTiles[len(gemmTiles)-1]
}

// wgTiles are the wgmma kernels' tiles: m tokens × n channels. n128 and
// n64: one consumer warpgroup and a producer warp (WG_THREADS), several
// blocks per multiprocessor; n256x2: two consumer warpgroups sharing the
// activation tile and a producer warpgroup, one block per multiprocessor
// (WG2_THREADS, WG2_SMEM in cuda/gemm_w4a4_sm90.cuh).
var wgTiles = []gemmTile{
	{"n256x2", 256, 128, 384, 4 * (256*66 + 2*2304)},
	{"n128", 128, 64, 160, 0},
	{"n64", 64, 64, 160, 0},
}

// n64PerSM is how many n64 blocks a multiprocessor holds at once: the
// minimum its kernels are compiled for (WG_TILES in cuda/svdq.cu), set by
// their registers (two accumulator sets, 126 registers a thread).
const n64PerSM = 3

// pickWGTile chooses the wgmma tile for m rows and npad channels on sms
// multiprocessors: n256x2 when it makes at least two waves of blocks that
// fill at least 85% of their slots (one block per multiprocessor runs all
// of K, so a last partial wave costs a whole block's time); otherwise n64
// when all its blocks run at once (n64PerSM per multiprocessor), else
// n128. Measured with bench-gpu (README): where picked, n256x2 is
// 1.02–1.11× the n128 kernel (H100); at 9216×3072, M = 1024 (2.2 waves)
// it was slower (H200). Where n64 now runs instead of n128 (one wave; M =
// 64–128 at N = 9216 and 12288, 384–512 at N = 3072), the fused layer is
// 1.04–1.08× (bench-gpu, H100, two rounds; NOTES, session 9); in two or
// more waves n64 is slower (M = 256, N = 9216: 0.93×).
func pickWGTile(m, npad, sms int) gemmTile {
	b2 := (roundUp(m, 256) / 256) * (npad / 128)
	if waves := (b2 + sms - 1) / sms; b2 >= 2*sms && float64(b2) >= 0.85*float64(waves*sms) {
		return wgTiles[0]
	}
	if (roundUp(m, 128)/64)*(npad/64) <= n64PerSM*sms {
		return wgTiles[2]
	}
	return wgTiles[1]
}

// TileEnv names an environment variable that forces the GEMM block tile
// (t64x128, t32x128 or t32x64 for the mma.sync kernels; n256x2, n128 or
// n64 for the wgmma ones) instead of the automatic choice, for tuning.
const TileEnv = "SVDQ_GEMM_TILE"

func tileOverride() (gemmTile, bool) { return findTile(gemmTiles) }

func wgTileOverride() (gemmTile, bool) { return findTile(wgTiles) }

func findTile(tiles []gemmTile) (gemmTile, bool) {
	name := os.Getenv(TileEnv)
	for _, t := range tiles {
		if t.name == name {
			return t, true
		}
	}
	return gemmTile{}, false
}

// kernelNames lists every kernel the host may launch (tests check that the
// embedded PTX defines each).
func kernelNames() []string {
	var names []string
	for _, dt := range []string{"bf16", "f16"} {
		for _, prec := range []string{"int4", "int4u", "nvfp4"} {
			names = append(names, "svdq_act_"+prec+"_"+dt+"_qd", "svdq_act_"+prec+"_"+dt+"_qd32",
				"svdq_act_"+prec+"_"+dt+"_q", "svdq_ref_"+prec+"_"+dt)
			for _, t := range gemmTiles {
				names = append(names, "svdq_gemm_"+prec+"_"+dt+"_fused_"+t.name, "svdq_gemm_"+prec+"_"+dt+"_nolora_"+t.name)
			}
			if prec != "nvfp4" {
				for _, t := range wgTiles {
					names = append(names, "svdq_wg_"+prec+"_"+dt+"_fused_"+t.name, "svdq_wg_"+prec+"_"+dt+"_nolora_"+t.name)
				}
				names = append(names, "svdq_act8_"+prec+"_"+dt+"_qd", "svdq_act8_"+prec+"_"+dt+"_qd32",
					"svdq_act8_"+prec+"_"+dt+"_q")
			}
		}
		names = append(names, "svdq_act_"+dt+"_d", "svdq_act_"+dt+"_d32")
		for _, t := range gemmTiles {
			names = append(names, "svdq_gemm_"+dt+"_upadd_"+t.name)
		}
	}
	return append(names, "svdq_fill_random", "svdq_fill_h", "svdq_spin")
}
