package model

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// FuzzRecord feeds arbitrary bytes to the record reader that resume and
// merge use: the structure check and every layer's and kept tensor's
// digest check must return errors, never panic. Seeded with a journal
// record and a part (with kept tensors) of the tiny model.
func FuzzRecord(f *testing.F) {
	model, cal := tinyModel(f)
	dir := f.TempDir()
	o := fastOptions(model, cal, filepath.Join(dir, "part.safetensors"))
	o.Shard = Shard{I: 0, N: 3}
	if _, err := Quantize(o); err != nil {
		f.Fatal(err)
	}
	part, err := os.ReadFile(o.Out)
	if err != nil {
		f.Fatal(err)
	}
	o = fastOptions(model, cal, filepath.Join(dir, "q.safetensors"))
	d := &fullDisk{full: func(p string, off int64) bool { return p == o.Out && off == 0 }}
	o.wrapWrites = d.wrap
	if _, err := Quantize(o); err == nil {
		f.Fatal("the output's last write did not fail")
	}
	rec, err := os.ReadFile(filepath.Join(WorkDir(o.Out), recordName(0)))
	if err != nil {
		f.Fatal(err)
	}
	if len(part) < 8<<20 {
		f.Add(part)
	}
	f.Add(rec)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 8<<20 {
			return
		}
		m, err := safetensors.OpenBytes("fuzz.safetensors", b)
		if err != nil {
			return
		}
		rf, err := newRecordFile("fuzz.safetensors", m)
		if err != nil {
			return
		}
		defer rf.Close()
		for i := range rf.hdr.Layers {
			rf.layerTensors(&rf.hdr.Layers[i])
		}
		for i := range rf.hdr.Kept {
			rf.keptTensor(&rf.hdr.Kept[i])
		}
		if ol := rf.hdr.Outline; ol != nil {
			for i := range rf.hdr.Layers {
				if ts, err := rf.layerTensors(&rf.hdr.Layers[i]); err == nil {
					ol.check(&rf.hdr.Layers[i], ts)
				}
			}
		}
	})
}
