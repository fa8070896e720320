package tinydit

import "github.com/svdq/svdq/calib"

// Calibrate runs the calibration pass: the model over n samples drawn by
// NewBatch(cfg, seed, n), batch samples at a time, with a hook that feeds
// every module's input to c (keyed by diffusers module name, the keys the
// flux preset looks up). Every image and text token of every sample is one
// calibration row of each module it reaches; the conditioning linears
// (timestep and text embedders, adaLN modulation) see one row per sample.
func (m *Model) Calibrate(c *calib.Collector, seed uint64, n, batch int) {
	batch = max(1, batch)
	in := NewBatch(m.cfg, seed, n)
	for lo := 0; lo < n; lo += batch {
		hi := min(n, lo+batch)
		m.Forward(in.Slice(m.cfg, lo, hi), Run{Hook: c.Observe})
	}
}
