package nunchaku

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/svdq/svdq/quant"
)

// Reference layouts, written a second time straight from the words of
// nunchaku-format.md: each walks the packed buffer in the stated memory
// order (outer to inner) and computes which logical element lands there,
// the opposite direction from the packers, which compute where each logical
// element goes.

// refQWeight: n = nt·128+p·16+a·8+g, k = kt·64+b·32+c·8+e, memory order
// nt,kt,p,g,c,a,b,e, eight e values per little-endian uint32.
func refQWeight(code func(n, k int) int8, np, kp int) []byte {
	var out []byte
	for nt := 0; nt < np/128; nt++ {
		for kt := 0; kt < kp/64; kt++ {
			for p := 0; p < 8; p++ {
				for g := 0; g < 8; g++ {
					for c := 0; c < 4; c++ {
						for a := 0; a < 2; a++ {
							for b := 0; b < 2; b++ {
								var word uint32
								for e := 0; e < 8; e++ {
									n := nt*128 + p*16 + a*8 + g
									k := kt*64 + b*32 + c*8 + e
									word |= uint32(code(n, k)&0xF) << (4 * e)
								}
								out = binary.LittleEndian.AppendUint32(out, word)
							}
						}
					}
				}
			}
		}
	}
	return out
}

// refScales: input [np, groups], n = nt·128+x·16+y·8+c·2+d, memory order
// nt,group,x,c,y,d. With groups = 1 this is the 1-D vector layout.
func refScales(val func(n, grp int) float32, np, groups int, dt quant.Float16) []byte {
	var out []byte
	for nt := 0; nt < np/128; nt++ {
		for grp := 0; grp < groups; grp++ {
			for x := 0; x < 8; x++ {
				for c := 0; c < 4; c++ {
					for y := 0; y < 2; y++ {
						for d := 0; d < 2; d++ {
							out = append(out, dt.Encode([]float32{val(nt*128+x*16+y*8+c*2+d, grp)})...)
						}
					}
				}
			}
		}
	}
	return out
}

// refMicro: input [np, groups] E4M3, n = nt·128+s·32+x·8+y, group = kt·4+j,
// memory order nt,kt,y,x,s,j.
func refMicro(val func(n, grp int) float32, np, groups int) []byte {
	var out []byte
	for nt := 0; nt < np/128; nt++ {
		for kt := 0; kt < groups/4; kt++ {
			for y := 0; y < 8; y++ {
				for x := 0; x < 4; x++ {
					for s := 0; s < 4; s++ {
						for j := 0; j < 4; j++ {
							out = append(out, quant.F32ToE4M3(val(nt*128+s*32+x*8+y, kt*4+j)))
						}
					}
				}
			}
		}
	}
	return out
}

// refLowRank: 16×16 tiles of the logical [rows, cols] matrix; down: tiles
// ordered column-tile (K) outer, row-tile (R) inner; up: row-tile (N)
// outer, column-tile (R) inner. In a tile row = a·8+g, col = b·8+c·2+e,
// order g,c,a,b,e.
func refLowRank(val func(row, col int) float32, rowsP, colsP int, down bool, dt quant.Float16) []byte {
	var out []byte
	tile := func(rt, ct int) {
		for g := 0; g < 8; g++ {
			for c := 0; c < 4; c++ {
				for a := 0; a < 2; a++ {
					for b := 0; b < 2; b++ {
						for e := 0; e < 2; e++ {
							out = append(out, dt.Encode([]float32{val(rt*16+a*8+g, ct*16+b*8+c*2+e)})...)
						}
					}
				}
			}
		}
	}
	if down {
		for ct := 0; ct < colsP/16; ct++ {
			for rt := 0; rt < rowsP/16; rt++ {
				tile(rt, ct)
			}
		}
	} else {
		for rt := 0; rt < rowsP/16; rt++ {
			for ct := 0; ct < colsP/16; ct++ {
				tile(rt, ct)
			}
		}
	}
	return out
}

// padded returns an accessor of the logical [rows, cols] row-major v that
// gives pad outside it.
func padded(v []float32, rows, cols int, pad float32) func(i, j int) float32 {
	return func(i, j int) float32 {
		if i < rows && j < cols {
			return v[i*cols+j]
		}
		return pad
	}
}

func TestPackW4A4MatchesSpecLayout(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, lc := range layerCases {
		for _, p := range precisions {
			for _, dt := range dtypes {
				t.Run(fmt.Sprintf("%s/%v/%v", lc.name, p, dt), func(t *testing.T) {
					l := randomLayer(rng, lc.n, lc.k, lc.r, p, dt)
					ts, err := PackW4A4(l)
					if err != nil {
						t.Fatal(err)
					}
					np, kp, rp := ceilTo(l.N, 128), ceilTo(l.K, 128), ceilTo(l.R, 16)
					G := l.Groups()
					code := func(n, k int) int8 {
						if n < l.N && k < l.K {
							return l.Codes[n*l.K+k]
						}
						return 0
					}
					want := map[string][]byte{
						"qweight":     refQWeight(code, np, kp),
						"bias":        refScales(func(n, _ int) float32 { return padded(l.Bias, l.N, 1, 0)(n, 0) }, np, 1, dt),
						"smooth":      refScales(func(k, _ int) float32 { return padded(l.Smooth, l.K, 1, 1)(k, 0) }, kp, 1, dt),
						"smooth_orig": refScales(func(k, _ int) float32 { return padded(l.Smooth, l.K, 1, 1)(k, 0) }, kp, 1, dt),
						"lora_down":   refLowRank(padded(l.Down, l.R, l.K, 0), rp, kp, true, dt),
						"lora_up":     refLowRank(padded(l.Up, l.N, l.R, 0), np, rp, false, dt),
					}
					if p == quant.INT4 {
						want["wscales"] = refScales(padded(l.Scales, l.N, G, 1), np, kp/64, dt)
					} else {
						want["wscales"] = refMicro(padded(l.Scales, l.N, G, 1), np, kp/16)
						want["wtscale"] = binary.LittleEndian.AppendUint32(nil, math.Float32bits(l.TensorScale))
					}
					if len(ts) != len(want) {
						t.Fatalf("got %d tensors, want %d", len(ts), len(want))
					}
					for _, x := range ts {
						w, ok := want[x.Suffix]
						if !ok {
							t.Fatalf("unexpected tensor %s", x.Suffix)
						}
						if string(x.Data) != string(w) {
							t.Errorf("%s: packed bytes differ from the spec's memory order (%d vs %d bytes, first diff at %d)",
								x.Suffix, len(x.Data), len(w), firstDiff(x.Data, w))
						}
					}
				})
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestScaleOrderTable checks the 1-D / INT4 scale permutation against the
// store-order table printed in nunchaku's packer.py (pack_scale, warp_n =
// 128): lane 0 holds n = 0 1 8 9, lane 1 holds 2 3 10 11, ..., lane 4 holds
// 16 17 24 25, lane 31 holds 118 119 126 127.
func TestScaleOrderTable(t *testing.T) {
	order := make([]int, 128)
	for n := 0; n < 128; n++ {
		order[scaleIndex(n, 0, 1)] = n
	}
	want := map[int][]int{
		0: {0, 1, 8, 9}, 1: {2, 3, 10, 11}, 2: {4, 5, 12, 13}, 3: {6, 7, 14, 15},
		4: {16, 17, 24, 25}, 7: {22, 23, 30, 31}, 28: {112, 113, 120, 121}, 31: {118, 119, 126, 127},
	}
	for lane, ns := range want {
		got := order[lane*4 : lane*4+4]
		if fmt.Sprint(got) != fmt.Sprint(ns) {
			t.Errorf("lane %d holds %v, want %v", lane, got, ns)
		}
	}
}

// TestMicroScaleOrderTable checks the NVFP4 micro-scale permutation against
// packer.py's table (pack_micro_scale, warp_n = 128): lane 0 loads
// n = 0 32 64 96, lane 1 8 40 72 104, lane 2 16 48 80 112, lane 3 24 56 88
// 120, lane 4 1 33 65 97, lane 28 7 39 71 103, lane 31 31 63 95 127; each n
// is a 32-bit word of 4 consecutive groups. (The table's lane 7 line,
// "25 57 81 113", is a typo in the source for 25 57 89 121.)
func TestMicroScaleOrderTable(t *testing.T) {
	type ng struct{ n, g int }
	order := make([]ng, 512)
	for n := 0; n < 128; n++ {
		for g := 0; g < 4; g++ {
			order[microIndex(n, g, 4)] = ng{n, g}
		}
	}
	want := map[int][]int{0: {0, 32, 64, 96}, 1: {8, 40, 72, 104}, 2: {16, 48, 80, 112},
		3: {24, 56, 88, 120}, 4: {1, 33, 65, 97}, 7: {25, 57, 89, 121}, 28: {7, 39, 71, 103}, 31: {31, 63, 95, 127}}
	for lane, ns := range want {
		for i, n := range ns {
			for g := 0; g < 4; g++ {
				if got := order[lane*16+i*4+g]; got != (ng{n, g}) {
					t.Errorf("lane %d word %d byte %d holds %+v, want n=%d g=%d", lane, i, g, got, n, g)
				}
			}
		}
	}
}

// TestIndexMapsArePermutations checks that every index map is a bijection
// onto the packed buffer, so packing loses nothing.
func TestIndexMapsArePermutations(t *testing.T) {
	check := func(name string, size int, idx func(yield func(int))) {
		seen := make([]bool, size)
		count := 0
		idx(func(i int) {
			if i < 0 || i >= size || seen[i] {
				t.Fatalf("%s: index %d out of range or repeated", name, i)
			}
			seen[i] = true
			count++
		})
		if count != size {
			t.Fatalf("%s: %d of %d positions written", name, count, size)
		}
	}
	np, kp := 256, 384
	check("qweight", np*kp, func(y func(int)) {
		for n := 0; n < np; n++ {
			for k := 0; k < kp; k++ {
				off, sh := qweightColOff(k)
				y(2*(qweightRowBase(n, kp)+off) + int(sh/4))
			}
		}
	})
	check("scale", np*6, func(y func(int)) {
		for n := 0; n < np; n++ {
			for g := 0; g < 6; g++ {
				y(scaleIndex(n, g, 6))
			}
		}
	})
	check("micro", np*24, func(y func(int)) {
		for n := 0; n < np; n++ {
			for g := 0; g < 24; g++ {
				y(microIndex(n, g, 24))
			}
		}
	})
	for _, down := range []bool{true, false} {
		check(fmt.Sprint("lowrank down=", down), 48*kp, func(y func(int)) {
			for r := 0; r < 48; r++ {
				for k := 0; k < kp; k++ {
					y(lowrankIndex(r, k, 48, kp, down))
				}
			}
		})
	}
	check("w4a16", 24*192, func(y func(int)) {
		for n := 0; n < 24; n++ {
			for k := 0; k < 192; k++ {
				off, sh := w4a16Offset(n, k, 192)
				y(2*off + int(sh/4))
			}
		}
	})
}
