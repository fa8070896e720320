package nunchaku

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

// TestLayerHashDefinition recomputes the digest from the documented
// records, written out by hand: suffix order, not the getter's, decides.
func TestLayerHashDefinition(t *testing.T) {
	ts := []Tensor{ // deliberately not in digest order
		{SuffixLoraUp, dtBF16, shape64(2, 0), nil},
		{SuffixBias, dtBF16, shape64(2), []byte{1, 2, 3, 4}},
		{SuffixWTScale, dtF32, nil, []byte{0, 0, 0x80, 0x3f}},
		{SuffixQWeight, dtI8, shape64(2, 3), []byte{9, 8, 7, 6, 5, 4}},
		{"proj_down", dtBF16, shape64(3, 1), []byte{1, 1, 1, 1, 1, 1}}, // alias: recorded as lora_down
	}
	var want bytes.Buffer
	want.WriteString("qweight I8 [2,3] 6\n\x09\x08\x07\x06\x05\x04")
	want.WriteString("wtscale F32 [] 4\n\x00\x00\x80\x3f")
	want.WriteString("bias BF16 [2] 4\n\x01\x02\x03\x04")
	want.WriteString("lora_down BF16 [3,1] 6\n\x01\x01\x01\x01\x01\x01")
	want.WriteString("lora_up BF16 [2,0] 0\n")
	sum := sha256.Sum256(want.Bytes())
	if got := HashTensors(ts); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("HashTensors %s, want %x", got, sum)
	}
	// The Python snippet of meta_hash.go over the same tensors printed this
	// (run once with python3's hashlib).
	const python = "7906f44d701d5bd8702c3ee71c8584c9fff5d55c4b25ecfbb8381595ddac35ec"
	if HashTensors(ts) != python {
		t.Fatalf("HashTensors %s, the documented Python gives %s", HashTensors(ts), python)
	}
	if len(PlaceholderHash) != HashLen || checkHash(PlaceholderHash) != nil {
		t.Fatalf("placeholder %q is not a well-formed hash", PlaceholderHash)
	}
}

// TestLayerHashSensitivity: any byte of any packed tensor, a dtype, a shape
// with the same bytes, or a missing tensor changes the digest; the same
// tensors give the same digest.
func TestLayerHashSensitivity(t *testing.T) {
	rng := newRand(71)
	for _, c := range []struct {
		name string
		ts   func() []Tensor
	}{
		{"int4", func() []Tensor {
			ts, err := PackW4A4(randomLayer(newRand(72), 130, 200, 20, quant.INT4, quant.BF16))
			must(t, err)
			return ts
		}},
		{"nvfp4", func() []Tensor {
			ts, err := PackW4A4(randomLayer(newRand(73), 64, 128, 0, quant.NVFP4, quant.F16))
			must(t, err)
			return ts
		}},
		{"w4a16", func() []Tensor {
			ts, err := PackW4A16(randomWeightOnly(newRand(74), 24, 128, quant.BF16), 6)
			must(t, err)
			return ts
		}},
	} {
		base := HashTensors(c.ts())
		if again := HashTensors(c.ts()); again != base {
			t.Fatalf("%s: digest not deterministic", c.name)
		}
		for i, x := range c.ts() {
			if len(x.Data) > 0 {
				ts := c.ts()
				ts[i].Data[rng.IntN(len(x.Data))] ^= 1 << rng.IntN(8)
				if HashTensors(ts) == base {
					t.Errorf("%s: a flipped bit of %s leaves the digest", c.name, x.Suffix)
				}
			}
			ts := c.ts()
			ts[i].DType = "U8"
			if HashTensors(ts) == base {
				t.Errorf("%s: another dtype of %s leaves the digest", c.name, x.Suffix)
			}
			ts = c.ts()
			ts[i].Shape = append([]int64{1}, ts[i].Shape...)
			if HashTensors(ts) == base {
				t.Errorf("%s: another shape of %s leaves the digest", c.name, x.Suffix)
			}
			ts = c.ts()
			ts = append(ts[:i], ts[i+1:]...)
			if HashTensors(ts) == base {
				t.Errorf("%s: dropping %s leaves the digest", c.name, x.Suffix)
			}
		}
	}
}

func TestMetaHashField(t *testing.T) {
	m := fluxMeta()
	m.Layers[0].SHA256 = strings.Repeat("0123456789abcdef", 4)
	s, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s, `"src_cols":[0,3072]}],"sha256":"0123456789abcdef`) {
		t.Fatalf("sha256 is not the layer's last field: %s", s)
	}
	p, err := ParseMeta(s)
	if err != nil {
		t.Fatal(err)
	}
	if lm, _ := p.Layer(m.Layers[0].Name); lm.SHA256 != m.Layers[0].SHA256 {
		t.Fatalf("hash %q after the round trip", lm.SHA256)
	}
	if lm, _ := p.Layer(m.Layers[1].Name); lm.SHA256 != "" {
		t.Fatalf("absent hash read as %q", lm.SHA256)
	}
	// Every well-formed hash marshals to the same length (the writer sizes
	// the header with PlaceholderHash).
	m.Layers[0].SHA256 = PlaceholderHash
	s2, err := m.Marshal()
	if err != nil || len(s2) != len(s) {
		t.Fatalf("placeholder: length %d, want %d (%v)", len(s2), len(s), err)
	}
	for _, bad := range []string{"0123", strings.Repeat("0123456789ABCDEF", 4), strings.Repeat("g", 64), strings.Repeat("a", 65)} {
		m.Layers[0].SHA256 = bad
		if _, err := m.Marshal(); err == nil || !strings.Contains(err.Error(), "sha256") {
			t.Errorf("hash %q: error %v", bad, err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
