package calib

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// FuzzOpen feeds arbitrary bytes to Open and Layer: they must return
// errors, never panic, and what Layer accepts must validate.
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
		if len(data) > 1<<20 {
			return
		}
		p := filepath.Join(t.TempDir(), "f.safetensors")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cf, err := Open(p)
		if err != nil {
			return
		}
		defer cf.Close()
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
