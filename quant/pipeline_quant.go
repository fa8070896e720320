package quant

import "math"

// The residual quantizer of the pipeline's inner loop: QuantizeInt4 and
// DequantizeInt4 fused into one pass, with the same codes and scales bit for
// bit (pipeline_quant_test.go checks it against the two reference calls).

// quantizeDequantInt4 quantizes the [rows, k] matrix v like
// QuantizeInt4(codes, scales, v, rows, k, dt.Round) and overwrites v with
// DequantizeInt4 of the result. codes [rows, k] and scales
// [rows, ceil(k/64)] are allocated by the caller. A group holding NaN or
// ±Inf is handed to QuantizeInt4, which panics naming it.
func quantizeDequantInt4(codes []int8, scales []float32, v []float32, rows, k int, dt Float16) {
	g := (k + Int4Group - 1) / Int4Group
	checkQuantArgs("quantizeDequantInt4", len(codes), len(scales), len(v), rows, k, g)
	if quantizeDequantInt4Fast(codes, scales, v, rows, k, dt) {
		return
	}
	quantizeDequantInt4Go(codes, scales, v, rows, k, dt)
}

// quantizeDequantInt4Go is quantizeDequantInt4 in Go, any k.
func quantizeDequantInt4Go(codes []int8, scales []float32, v []float32, rows, k int, dt Float16) {
	g := (k + Int4Group - 1) / Int4Group
	for r := 0; r < rows; r++ {
		row := v[r*k : (r+1)*k : (r+1)*k]
		crow := codes[r*k : (r+1)*k : (r+1)*k]
		for j := 0; j < g; j++ {
			b, e := j*Int4Group, min((j+1)*Int4Group, k)
			grp := row[b:e:e]
			mbits := absMaxBits(grp)
			if mbits >= 0x7f800000 { // NaN or ±Inf
				QuantizeInt4(codes[r*k:(r+1)*k], scales[r*g:(r+1)*g], row, 1, k, dt.Round) // panics
			}
			s := dt.Round(math.Float32frombits(mbits) / 7)
			scales[r*g+j] = s
			switch {
			case s == 0:
				clear(crow[b:e])
				clear(grp)
			case s < 0x1p-100: // 1/s may overflow
				roundGroupDiv(grp, crow[b:e:e], s)
			default:
				roundGroup(grp, crow[b:e:e], s)
			}
		}
	}
}

// absMaxBits returns max |x| over v as float32 bits: for non-negative values
// the bits order like the values, and NaN lies above +Inf.
//
//go:noinline
func absMaxBits(v []float32) uint32 {
	var m0, m1, m2, m3 uint32 // four chains: the max's latency, not its count, bounds one
	i := 0
	for ; i+4 <= len(v); i += 4 {
		w := v[i : i+4 : i+4]
		m0 = max(m0, math.Float32bits(w[0])&^(1<<31))
		m1 = max(m1, math.Float32bits(w[1])&^(1<<31))
		m2 = max(m2, math.Float32bits(w[2])&^(1<<31))
		m3 = max(m3, math.Float32bits(w[3])&^(1<<31))
	}
	for ; i < len(v); i++ {
		m0 = max(m0, math.Float32bits(v[i])&^(1<<31))
	}
	return max(m0, m1, m2, m3)
}

// magic: x + magic − magic rounds float32 |x| < 2^22 half to even.
const magic = 0x1.8p23

// roundGroup writes codes clamp(RoundToEven(x/s), −8, 7) into out and their
// dequantized values code·s into v. x·(1/s) is within 2 ulps of x/s: it
// rounds to the same integer unless it lies that close to a tie, where the
// exact quotient decides. s must be ≥ 2^-100.
func roundGroup(v []float32, out []int8, s float32) {
	inv := 1 / s
	out = out[:len(v)]
	for i, x := range v {
		q := clamp87(x * inv)
		rq := q + magic - magic
		if d := q - rq; d > 0.4999 || d < -0.4999 {
			rq = clamp87(x/s) + magic - magic
		}
		out[i] = int8(rq)
		v[i] = rq * s
	}
}

// roundGroupDiv is roundGroup by division, for tiny scales.
func roundGroupDiv(v []float32, out []int8, s float32) {
	out = out[:len(v)]
	for i, x := range v {
		rq := clamp87(x/s) + magic - magic
		out[i] = int8(rq)
		v[i] = rq * s
	}
}

// clamp87 clamps q to [−8, 7] (q is never NaN here).
func clamp87(q float32) float32 {
	if q > 7 {
		return 7
	}
	if q < -8 {
		return -8
	}
	return q
}
