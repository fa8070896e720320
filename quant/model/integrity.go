package model

import (
	"fmt"
	"regexp"

	"github.com/svdq/svdq/formats/nunchaku"
)

// Integrity of a layer: its packed tensors against the SHA-256 recorded in
// the svdq metadata when it was written (nunchaku.LayerHash).
const (
	IntegrityOK       = "ok"       // the file's bytes hash to the recorded value
	IntegrityMismatch = "mismatch" // they do not: the file changed after it was written
	IntegrityAbsent   = "absent"   // no hash recorded (older svdq files, other tools' files)
)

// LayerIntegrity is the outcome of verifying one layer.
type LayerIntegrity struct {
	Name   string `json:"name"`
	Status string `json:"integrity"` // IntegrityOK, IntegrityMismatch or IntegrityAbsent
	// Recorded is the hash in the metadata, Actual that of the file's
	// bytes; both "" when Status is IntegrityAbsent.
	Recorded string `json:"recorded,omitempty"`
	Actual   string `json:"sha256,omitempty"`
}

// Problem describes a mismatch in one line: "packed bytes differ from
// those recorded at quantize time: sha256 <actual>, recorded <recorded>";
// "" unless Status is IntegrityMismatch.
func (li LayerIntegrity) Problem() string {
	if li.Status != IntegrityMismatch {
		return ""
	}
	return fmt.Sprintf("packed bytes differ from those recorded at quantize time: sha256 %s, recorded %s", li.Actual, li.Recorded)
}

// Mismatches returns the entries of ls whose Status is IntegrityMismatch.
func Mismatches(ls []LayerIntegrity) []LayerIntegrity {
	var out []LayerIntegrity
	for _, l := range ls {
		if l.Status == IntegrityMismatch {
			out = append(out, l)
		}
	}
	return out
}

// verify hashes the packed tensors of every given layer that records a
// hash, on up to 8 goroutines, and returns one entry per layer in the
// given order. A tensor that cannot be read is an error (naming the file);
// a digest that differs is not: it is reported as IntegrityMismatch.
func (f *qfile) verify(lms []*nunchaku.LayerMeta) ([]LayerIntegrity, error) {
	out := make([]LayerIntegrity, len(lms))
	err := eachParallel(len(lms), func(i int) error {
		lm := lms[i]
		out[i] = LayerIntegrity{Name: lm.Name, Status: IntegrityAbsent}
		if lm.SHA256 == "" {
			return nil
		}
		get, errp := f.getter(lm.Name)
		sum := nunchaku.LayerHash(get)
		if *errp != nil {
			return fmt.Errorf("%s: layer %s: %w", f.path, lm.Name, *errp)
		}
		out[i].Recorded, out[i].Actual, out[i].Status = lm.SHA256, sum, IntegrityOK
		if sum != lm.SHA256 {
			out[i].Status = IntegrityMismatch
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// verifyFile verifies every layer of f's svdq entry and returns an error
// naming the first (in metadata order) whose bytes differ from its record;
// a file without the entry passes. Jobs that rewrite a file (fuse-lora)
// or derive one from it (unpack) call it before anything else.
func (f *qfile) verifyFile() error {
	if f.meta == nil {
		return nil
	}
	lms := make([]*nunchaku.LayerMeta, len(f.meta.Layers))
	for i := range f.meta.Layers {
		lms[i] = &f.meta.Layers[i]
	}
	res, err := f.verify(lms)
	if err != nil {
		return err
	}
	if bad := Mismatches(res); len(bad) > 0 {
		more := ""
		switch n := len(bad) - 1; {
		case n == 1:
			more = " (1 more layer differs)"
		case n > 1:
			more = fmt.Sprintf(" (%d more layers differ)", n)
		}
		return fmt.Errorf("%s: layer %s: %s%s; refusing a corrupted file", f.path, bad[0].Name, bad[0].Problem(), more)
	}
	return nil
}

// VerifyIntegrity checks the recorded hash of the quantized layers of the
// checkpoint at path whose names match layers (nil: all): the layers of
// its svdq metadata, or, without it, those found by tensor suffix (all
// IntegrityAbsent). The result is in the file's layer order; read errors
// are errors, mismatches are entries.
func VerifyIntegrity(path string, layers *regexp.Regexp) ([]LayerIntegrity, error) {
	f, err := openQuantized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lms []*nunchaku.LayerMeta
	if f.meta != nil {
		for i := range f.meta.Layers {
			lms = append(lms, &f.meta.Layers[i])
		}
	} else {
		for _, g := range nunchaku.Layers(f.r.Names()) {
			lms = append(lms, &nunchaku.LayerMeta{Name: g.Name})
		}
	}
	var keep []*nunchaku.LayerMeta
	for _, lm := range lms {
		if layers == nil || layers.MatchString(lm.Name) {
			keep = append(keep, lm)
		}
	}
	return f.verify(keep)
}
