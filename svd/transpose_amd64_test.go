//go:build amd64 && !purego

package svd

import (
	"testing"

	"golang.org/x/sys/cpu"
)

func TestTranspose16(t *testing.T) {
	if !cpu.X86.HasAVX512F {
		t.Skip("no AVX-512")
	}
	const sld, dld = 21, 19
	src := gaussMat(16, sld, 4)
	for rows := 0; rows <= 16; rows++ {
		for _, mask := range []int{0xFFFF, 0x0FFF, 0x003F, 0x8001} {
			dst := make([]float32, 16*dld)
			for i := range dst {
				dst[i] = -7
			}
			transpose16(&dst[0], dld, &src[0], sld, rows, mask)
			for q := 0; q < 16; q++ {
				for i := 0; i < dld; i++ {
					want := float32(-7)
					if i < 16 && mask>>i&1 == 1 {
						want = 0
						if i < rows {
							want = src[i*sld+q]
						}
					}
					if got := dst[q*dld+i]; got != want {
						t.Fatalf("rows=%d mask=%#x: dst[%d, %d] = %g, want %g", rows, mask, q, i, got, want)
					}
				}
			}
		}
	}
}

func TestTranspose8(t *testing.T) {
	if !cpu.X86.HasAVX2 {
		t.Skip("no AVX2")
	}
	const sld, dld = 11, 13
	src := gaussMat(8, sld, 5)
	for rows := 0; rows <= 8; rows++ {
		for _, lanes := range []int{8, 6, 4, 1} {
			dst := make([]float32, 8*dld)
			for i := range dst {
				dst[i] = -7
			}
			transpose8(&dst[0], dld, &src[0], sld, rows, &laneMasks[lanes])
			for q := 0; q < 8; q++ {
				for i := 0; i < dld; i++ {
					want := float32(-7)
					if i < lanes {
						want = 0
						if i < rows {
							want = src[i*sld+q]
						}
					}
					if got := dst[q*dld+i]; got != want {
						t.Fatalf("rows=%d lanes=%d: dst[%d, %d] = %g, want %g", rows, lanes, q, i, got, want)
					}
				}
			}
		}
	}
}
