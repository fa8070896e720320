package model

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
)

// The sidecar: the base bytes and LoRA factors of the kept (16-bit)
// tensors LoRAs are merged into (lora.Reserved* names) live in a separate
// safetensors file next to the fused file, named Out + lora.SidecarSuffix,
// never in the fused file's tensor table, where nunchaku's strict loaders
// would reject them. The fused file's record names it and holds its
// SHA-256; removal reads it. It is written atomically (temporary file and
// rename) before the fused file, so a fused file never names a sidecar
// that was not there first.

// sidecarOf returns the sidecar path of a fused file.
func sidecarOf(out string) string { return out + lora.SidecarSuffix }

// checkpointFiles lists the files of a checkpoint path (a folder's shards,
// safetensors.CheckpointFiles), or the path itself.
func checkpointFiles(path string) []string {
	if fs, err := safetensors.CheckpointFiles(path); err == nil {
		return append(fs, path)
	}
	return []string{path}
}

// fuseInput is one input of FuseLoRA besides the model and its sidecar:
// the output must not be path (what names it in the error), its sidecar
// none of files.
type fuseInput struct {
	path, what string
	files      []string
}

// inputs lists the inputs of opt besides the model and its sidecar, in
// the order they are checked: each LoRA (with the checkpoint files of a
// --delta and its --base), the calibration file, the reference's files.
func (opt FuseOptions) inputs() []fuseInput {
	var ins []fuseInput
	for _, l := range opt.LoRAs {
		if l.Base == "" {
			ins = append(ins, fuseInput{l.Path, "the LoRA file " + l.Path, checkpointFiles(l.Path)})
			continue
		}
		ins = append(ins, fuseInput{path: l.Path, what: "the LoRA file " + l.Path})
		for _, p := range append(checkpointFiles(l.Path), checkpointFiles(l.Base)...) {
			ins = append(ins, fuseInput{p, "the input " + p + " of --delta/--base", []string{p}})
		}
	}
	if opt.Calib != "" {
		ins = append(ins, fuseInput{opt.Calib, "the calibration file " + opt.Calib, []string{opt.Calib}})
	}
	if opt.Reference != "" {
		for _, p := range checkpointFiles(opt.Reference) {
			ins = append(ins, fuseInput{p, "the reference " + p, []string{p}})
		}
	}
	return ins
}

// sameFile reports whether a and b name one existing file (symbolic and
// hard links followed, as checkOut does).
func sameFile(a, b string) bool {
	ai, err := os.Stat(a)
	if err != nil {
		return false
	}
	bi, err := os.Stat(b)
	return err == nil && os.SameFile(ai, bi)
}

// openSide opens where the input's reserved tensors are: the sidecar its
// record names (looked up in the input's directory, then as the input's
// path + lora.SidecarSuffix for a pair renamed together), checked against
// the recorded SHA-256; or, for a version-1 record, the input itself when
// its table carries them.
func (fu *fusion) openSide() error {
	sc := fu.prov.Sidecar
	if sc == nil {
		for _, n := range fu.f.r.Names() {
			if strings.HasPrefix(n, lora.ReservedPrefix) {
				fu.side, fu.sidePath = fu.f.r, fu.opt.Model
				break
			}
		}
		return nil
	}
	path := filepath.Join(filepath.Dir(fu.opt.Model), sc.File)
	if _, err := os.Stat(path); err != nil {
		alt := sidecarOf(fu.opt.Model)
		if _, err2 := os.Stat(alt); err2 != nil || alt == path {
			return fmt.Errorf("%s: the sidecar %s is missing (%v): it holds the 16-bit base tensors and LoRA factors of the layers LoRAs are merged into, "+
				"which fuse-lora needs to change this file; keep it next to the fused file, as fuse-lora wrote it", fu.opt.Model, path, errors.Unwrap(err))
		}
		path = alt
	}
	sum, err := hashFile(path)
	if err != nil {
		return err
	}
	if sum != sc.SHA256 {
		return fmt.Errorf("%s: the sidecar %s has sha256 %s, but the file records %s: it is not this file's sidecar (or it changed)", fu.opt.Model, path, sum, sc.SHA256)
	}
	r, err := safetensors.Open(path)
	if err != nil {
		return err
	}
	fu.side, fu.sidePath = r, path
	return nil
}

// checkSidecarPath refuses an output whose sidecar path (or whose own
// path) is one of the inputs: the model, its sidecar, a LoRA file.
func (fu *fusion) checkSidecarPath() error {
	side := sidecarOf(fu.opt.Out)
	inputs := []string{fu.opt.Model}
	if fu.sidePath != "" && fu.sidePath != fu.opt.Model {
		inputs = append(inputs, fu.sidePath)
		if sameFile(fu.opt.Out, fu.sidePath) {
			return fmt.Errorf("%s: output would overwrite the input's sidecar %s", fu.opt.Out, fu.sidePath)
		}
	}
	for _, in := range fu.opt.inputs() {
		inputs = append(inputs, in.files...)
	}
	for _, in := range inputs {
		if sameFile(side, in) {
			return fmt.Errorf("%s: the output's sidecar %s would overwrite the input %s: choose another --out", fu.opt.Out, side, in)
		}
	}
	return nil
}

// removeStaleSidecar deletes Out's sidecar left by an earlier run when the
// output needs none (every kept tensor back to its base): it would name a
// file that no longer describes Out. Only a file marked as a sidecar is
// removed.
func (fu *fusion) removeStaleSidecar() {
	side := sidecarOf(fu.opt.Out)
	r, err := safetensors.Open(side)
	if err != nil {
		return
	}
	_, ours := r.Metadata()[lora.SidecarMetaKey]
	r.Close()
	if !ours {
		fu.warn("%s exists but is not a fuse-lora sidecar: left alone", side)
		return
	}
	if err := os.Remove(side); err != nil {
		fu.warn("stale sidecar %s not removed: %v", side, err)
	}
}
