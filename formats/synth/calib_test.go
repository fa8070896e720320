package synth

import (
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/calib"
)

// TestCalibValid: the calibration files pass the calib package's
// svdq-calib/1 checks (header rules and every layer's values).
func TestCalibValid(t *testing.T) {
	for _, arch := range []string{"flux-dev", "sana", "sdxl"} {
		dir := gen(t, Options{Arch: arch, Scale: 0.125, Blocks: 1, Samples: 16, Naming: map[bool]string{true: "bfl"}[arch == "flux-dev"]})
		f, err := calib.Open(filepath.Join(dir, CalibFile))
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		for _, n := range f.Names() {
			if _, err := f.Layer(n); err != nil {
				t.Errorf("%s: %v", arch, err)
			}
		}
		f.Close()
	}
}
