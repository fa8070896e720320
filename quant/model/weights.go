package model

import (
	"fmt"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// source is one block of rows of a layer's weight read from a checkpoint
// tensor: rows srcRows (columns cols) of tensor land in rows rows of the
// layer's weight W [N, K]; bias, when not "", supplies the same rows of the
// layer's bias. It is the common form of preset.Source (quantize) and
// nunchaku.SourceMeta (check).
type source struct {
	tensor, bias        string
	srcRows, cols, rows [2]int
}

// readWeight assembles the float32 weight W [n, k] and bias [n] (nil when no
// source carries one) of a layer from the checkpoint r at path file. Rows
// no source covers are zero. A tensor must be 2-D, or 4-D [N, K, 1, 1]
// (a 1×1 convolution read as a linear). Errors name the file and tensor:
// a missing tensor, a shape or range that does not fit, a dtype that is not
// a float, or a NaN/±Inf value (with its row and column).
func readWeight(r safetensors.Reader, file string, srcs []source, n, k int) (w, bias []float32, dt quant.Float16, err error) {
	w = make([]float32, n*k)
	dt = quant.BF16
	for i, s := range srcs {
		info, cols, err := sourceInfo(r, file, s, n, k)
		if err != nil {
			return nil, nil, 0, err
		}
		if i == 0 && info.DType == safetensors.F16 {
			dt = quant.F16
		}
		nr := s.srcRows[1] - s.srcRows[0]
		raw, err := r.Bytes(s.tensor)
		if err != nil {
			return nil, nil, 0, err
		}
		size := info.DType.Size()
		for i := 0; i < nr; i++ {
			row := s.srcRows[0] + i
			off := (row*cols + s.cols[0]) * size
			dst := w[(s.rows[0]+i)*k : (s.rows[0]+i+1)*k]
			if err := quant.Decode(dst, string(info.DType), raw[off:off+k*size]); err != nil {
				return nil, nil, 0, fmt.Errorf("%s: tensor %q: %v", file, s.tensor, err)
			}
			if j := quant.FirstNonFinite(dst); j >= 0 {
				return nil, nil, 0, fmt.Errorf("%s: tensor %q: non-finite value %v at [%d, %d]", file, s.tensor, dst[j], row, s.cols[0]+j)
			}
		}
		if s.bias == "" {
			continue
		}
		if bias == nil {
			bias = make([]float32, n)
		}
		if err := readRows(r, file, s.bias, s.srcRows, bias[s.rows[0]:s.rows[1]]); err != nil {
			return nil, nil, 0, err
		}
	}
	return w, bias, dt, nil
}

// checkSources checks, from the header alone, what readWeight checks
// before it reads: every source tensor (and bias) is there, a float
// matrix, and its ranges fit.
func checkSources(r safetensors.Reader, file string, srcs []source, n, k int) error {
	for _, s := range srcs {
		if _, _, err := sourceInfo(r, file, s, n, k); err != nil {
			return err
		}
		if s.bias == "" {
			continue
		}
		info, ok := r.Info(s.bias)
		switch {
		case !ok:
			return fmt.Errorf("%s: no tensor %q", file, s.bias)
		case len(info.Shape) != 1 || s.srcRows[0] < 0 || int64(s.srcRows[1]) > info.Shape[0]:
			return fmt.Errorf("%s: tensor %q: shape %v does not hold elements %v", file, s.bias, info.Shape, s.srcRows)
		case !isFloat(info.DType):
			return fmt.Errorf("%s: tensor %q: dtype %s is not a float type", file, s.bias, info.DType)
		}
	}
	return nil
}

// sourceInfo returns the header entry of a source tensor and its column
// count, after checking that it is a float matrix whose rows srcRows and
// columns cols land in rows rows of a layer [n, k].
func sourceInfo(r safetensors.Reader, file string, s source, n, k int) (safetensors.Info, int, error) {
	info, ok := r.Info(s.tensor)
	if !ok {
		return info, 0, fmt.Errorf("%s: no tensor %q", file, s.tensor)
	}
	rows, cols, err := matrixShape(info)
	if err != nil {
		return info, 0, fmt.Errorf("%s: tensor %q: %v", file, s.tensor, err)
	}
	nr := s.srcRows[1] - s.srcRows[0]
	if s.srcRows[0] < 0 || s.srcRows[1] > rows || s.cols[0] < 0 || s.cols[1] > cols ||
		s.cols[1]-s.cols[0] != k || s.rows[1]-s.rows[0] != nr || s.rows[0] < 0 || s.rows[1] > n {
		return info, 0, fmt.Errorf("%s: tensor %q [%d %d]: rows %v cols %v do not fit layer rows %v of [%d %d]",
			file, s.tensor, rows, cols, s.srcRows, s.cols, s.rows, n, k)
	}
	return info, cols, nil
}

// readRows decodes elements lo..hi-1 of the 1-D tensor name into dst,
// rejecting non-finite values.
func readRows(r safetensors.Reader, file, name string, span [2]int, dst []float32) error {
	info, ok := r.Info(name)
	if !ok {
		return fmt.Errorf("%s: no tensor %q", file, name)
	}
	if len(info.Shape) != 1 || span[0] < 0 || int64(span[1]) > info.Shape[0] {
		return fmt.Errorf("%s: tensor %q: shape %v does not hold elements %v", file, name, info.Shape, span)
	}
	if !isFloat(info.DType) {
		return fmt.Errorf("%s: tensor %q: dtype %s is not a float type", file, name, info.DType)
	}
	raw, err := r.Bytes(name)
	if err != nil {
		return err
	}
	size := info.DType.Size()
	if err := quant.Decode(dst, string(info.DType), raw[span[0]*size:span[1]*size]); err != nil {
		return fmt.Errorf("%s: tensor %q: %v", file, name, err)
	}
	if j := quant.FirstNonFinite(dst); j >= 0 {
		return fmt.Errorf("%s: tensor %q: non-finite value %v at [%d]", file, name, dst[j], span[0]+j)
	}
	return nil
}

// matrixShape returns the [rows, cols] of a linear weight: a float tensor
// of shape [rows, cols] or [rows, cols, 1, 1].
func matrixShape(info safetensors.Info) (rows, cols int, err error) {
	if !isFloat(info.DType) {
		return 0, 0, fmt.Errorf("dtype %s is not a float type", info.DType)
	}
	s := info.Shape
	switch {
	case len(s) == 2:
	case len(s) == 4 && s[2] == 1 && s[3] == 1:
	default:
		return 0, 0, fmt.Errorf("shape %v is not a matrix [out, in] or a 1×1 convolution [out, in, 1, 1]", s)
	}
	return int(s[0]), int(s[1]), nil
}

// isFloat reports whether d is a floating-point dtype quant.Decode reads.
func isFloat(d safetensors.DType) bool {
	switch d {
	case safetensors.F64, safetensors.F32, safetensors.F16, safetensors.BF16, safetensors.F8E4M3, safetensors.F8E5M2:
		return true
	}
	return false
}

// checkFinite scans a float tensor's raw bytes for NaN or ±Inf, a block at
// a time, and returns an error naming the file, tensor and element index.
// Non-float tensors pass.
func checkFinite(r safetensors.Reader, file, name string) error {
	info, ok := r.Info(name)
	if !ok {
		return fmt.Errorf("%s: no tensor %q", file, name)
	}
	if !isFloat(info.DType) {
		return nil
	}
	raw, err := r.Bytes(name)
	if err != nil {
		return err
	}
	size := info.DType.Size()
	const block = 1 << 16
	buf := make([]float32, min(block, len(raw)/size))
	for off := 0; off < len(raw)/size; off += block {
		m := min(block, len(raw)/size-off)
		if err := quant.Decode(buf[:m], string(info.DType), raw[off*size:(off+m)*size]); err != nil {
			return fmt.Errorf("%s: tensor %q: %v", file, name, err)
		}
		if j := quant.FirstNonFinite(buf[:m]); j >= 0 {
			return fmt.Errorf("%s: tensor %q: non-finite value %v at element %d", file, name, buf[j], off+j)
		}
	}
	return nil
}
