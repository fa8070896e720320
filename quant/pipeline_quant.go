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
	const magic = 0x1.8p23 // x + magic − magic rounds |x| < 2^22 half to even
	for r := 0; r < rows; r++ {
		row := v[r*k : (r+1)*k : (r+1)*k]
		crow := codes[r*k : (r+1)*k : (r+1)*k]
		for j := 0; j < g; j++ {
			b, e := j*Int4Group, min((j+1)*Int4Group, k)
			grp, out := row[b:e:e], crow[b:e:e]
			// |x| as bits orders like the value, NaN above +Inf.
			var mbits uint32
			for _, x := range grp {
				mbits = max(mbits, math.Float32bits(x)&^(1<<31))
			}
			amax := math.Float32frombits(mbits)
			if mbits >= 0x7f800000 {
				QuantizeInt4(codes[r*k:(r+1)*k], scales[r*g:(r+1)*g], row, 1, k, dt.Round) // panics
			}
			s := dt.Round(amax / 7)
			scales[r*g+j] = s
			if s == 0 {
				clear(out)
				clear(grp)
				continue
			}
			// x·(1/s) is within 2 ulps of x/s: it rounds to the same
			// integer unless it lies that close to a tie, where the exact
			// quotient decides.
			inv := 1 / s
			if s < 0x1p-100 { // 1/s may overflow: divide
				for i, x := range grp {
					q := x / s
					if q > 7 {
						q = 7
					} else if q < -8 {
						q = -8
					}
					q = q + magic - magic
					out[i] = int8(q)
					grp[i] = q * s
				}
				continue
			}
			for i, x := range grp {
				q := x * inv
				if q > 7 {
					q = 7
				} else if q < -8 {
					q = -8
				}
				rq := q + magic - magic
				if d := q - rq; d > 0.4999 || d < -0.4999 {
					rq = x / s
					if rq > 7 {
						rq = 7
					} else if rq < -8 {
						rq = -8
					}
					rq = rq + magic - magic
				}
				out[i] = int8(rq)
				grp[i] = rq * s
			}
		}
	}
}
