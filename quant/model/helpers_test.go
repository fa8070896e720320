package model

import (
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/svdq/svdq/formats/synth"
)

// tinyFLUX is a synthetic FLUX.1-dev checkpoint small enough for unit tests:
// width 128, one double block (and the single blocks synth pairs with it).
var tinyFLUX = struct {
	once         sync.Once
	dir          string
	model, calib string
	err          error
}{}

// tinyModel returns the paths of the shared tiny FLUX checkpoint and its
// calibration file, generating them once per test binary.
func tinyModel(t testing.TB) (model, calib string) {
	t.Helper()
	tinyFLUX.once.Do(func() {
		dir, err := osMkdirTemp()
		if err != nil {
			tinyFLUX.err = err
			return
		}
		tinyFLUX.dir = dir
		tinyFLUX.err = synth.Generate(synth.Options{Arch: "flux-dev", Out: dir, Scale: 0.04, Blocks: 1, Samples: 64, Seed: 1})
		tinyFLUX.model = filepath.Join(dir, synth.ModelFile)
		tinyFLUX.calib = filepath.Join(dir, synth.CalibFile)
	})
	if tinyFLUX.err != nil {
		t.Fatal(tinyFLUX.err)
	}
	return tinyFLUX.model, tinyFLUX.calib
}

// fastOptions are pipeline options that keep tests quick.
func fastOptions(model, calib, out string) QuantizeOptions {
	return QuantizeOptions{
		PlanOptions: PlanOptions{Model: model, Rank: 16},
		Calib:       calib, Out: out, Search: 1, Iters: 3, Workers: 2, Tool: "svdq test",
	}
}

func mustRegexp(s string) *regexp.Regexp { return regexp.MustCompile(s) }
