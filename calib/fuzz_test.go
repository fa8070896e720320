package calib

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// fuzzMaxBytes: the fuzz target skips larger inputs before any work (as
// Go's image/png fuzz test skips huge images). Every declared size is
// bounded by the file's length (the safetensors span checks), and a file
// of a few layers, about 8 times the seeds, exercises every rule; the
// fuzzer minimizes each new input in time quadratic in its length and
// fuzzes nothing meanwhile, so large inputs would stall it.
const fuzzMaxBytes = 1 << 12

// FuzzOpen feeds arbitrary bytes to what Open does after reading the file
// (the header checks of the svdq-calib/1 rules, newFile) and to Layer,
// in memory: they must return errors, never panic, and what Layer accepts
// must validate. The safetensors header itself is fuzzed by
// formats/safetensors FuzzParseHeader; the seeds are small valid files in
// each samples dtype (a few hundred bytes).
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	for i, dt := range []safetensors.DType{safetensors.F32, safetensors.F16, safetensors.BF16} {
		p := filepath.Join(dir, "seed.safetensors")
		st := map[string]*Stats{"a.b": randStats(rng, 3, 2, int64(2+i)), "c": randStats(rng, 2, 1, 0)}
		if err := WriteAs(p, st, dt); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > fuzzMaxBytes {
			return
		}
		const name = "fuzz.safetensors"
		r, err := safetensors.OpenBytes(name, data)
		if err != nil {
			return
		}
		cf, err := newFile(name, r)
		if err != nil {
			return
		}
		for _, n := range cf.Names() {
			st, err := cf.Layer(n)
			if err != nil {
				continue
			}
			if err := Validate(st, 0); err != nil {
				t.Errorf("Layer(%q) accepted statistics that do not validate: %v", n, err)
			}
		}
	})
}
