package model

import (
	"path/filepath"
	"testing"
)

func TestQuantizeTiny(t *testing.T) {
	model, cal := tinyModel(t)
	out := filepath.Join(t.TempDir(), "q.safetensors")
	rep, err := Quantize(fastOptions(model, cal, out))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.Layers {
		t.Logf("%-45s %v %s r%d a%.2f b%.2f err %.4f", l.Name, l.Shape, l.Precision, l.Rank, l.Alpha, l.Beta, l.RelError)
	}
	t.Logf("%+v", rep.Totals)
}
