package model

import (
	"fmt"
	"sync"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// qfile is an open quantized checkpoint with its svdq records.
type qfile struct {
	path  string
	r     safetensors.Reader
	meta  *nunchaku.Meta      // nil when the file has no svdq entry
	calib map[string]CalibRef // nil when the file has no svdq_calib entry
}

// openQuantized opens a quantized checkpoint and parses its svdq and
// svdq_calib metadata when present (malformed entries are errors).
func openQuantized(path string) (*qfile, error) {
	r, err := safetensors.OpenCheckpoint(path)
	if err != nil {
		return nil, err
	}
	f := &qfile{path: path, r: r}
	md := r.Metadata()
	if s, ok := md[nunchaku.MetaSVDQ]; ok {
		if f.meta, err = nunchaku.ParseMeta(s); err != nil {
			r.Close()
			return nil, fmt.Errorf("%s: %v", path, err)
		}
	}
	if s, ok := md[MetaCalib]; ok {
		if f.calib, err = parseCalibRefs(s); err != nil {
			r.Close()
			return nil, fmt.Errorf("%s: %v", path, err)
		}
	}
	return f, nil
}

func (f *qfile) Close() error { return f.r.Close() }

// getter returns a nunchaku.Getter over the tensors of layer name; a read
// error is kept in *errp (the Getter reports the tensor absent).
func (f *qfile) getter(name string) (nunchaku.Getter, *error) {
	var mu sync.Mutex
	var first error
	get := func(suffix string) (string, []int64, []byte, bool) {
		info, ok := f.r.Info(name + "." + suffix)
		if !ok {
			return "", nil, nil, false
		}
		b, err := f.r.Bytes(info.Name)
		if err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
			return "", nil, nil, false
		}
		return string(info.DType), info.Shape, b, true
	}
	return get, &first
}

// unpackW4A4 reads the W4A4 layer described by lm.
func (f *qfile) unpackW4A4(lm *nunchaku.LayerMeta) (*quant.Layer, error) {
	get, errp := f.getter(lm.Name)
	l, err := nunchaku.UnpackW4A4(get, lm.W4A4Options(f.path))
	if *errp != nil {
		return nil, *errp
	}
	return l, err
}

// unpackW4A16 reads the W4A16 layer described by lm.
func (f *qfile) unpackW4A16(lm *nunchaku.LayerMeta) (*quant.WeightOnly, error) {
	get, errp := f.getter(lm.Name)
	w, err := nunchaku.UnpackW4A16(get, lm.W4A16Options(f.path))
	if *errp != nil {
		return nil, *errp
	}
	return w, err
}

// unpackW4Linear reads the W4Linear (KindW4A16G128) layer described by lm.
func (f *qfile) unpackW4Linear(lm *nunchaku.LayerMeta) (*quant.WeightOnly, error) {
	get, errp := f.getter(lm.Name)
	w, err := nunchaku.UnpackW4Linear(get, lm.W4LinearOptions(f.path))
	if *errp != nil {
		return nil, *errp
	}
	return w, err
}

// unpackWeightOnly reads a layer of either weight-only kind.
func (f *qfile) unpackWeightOnly(lm *nunchaku.LayerMeta) (*quant.WeightOnly, error) {
	if lm.Kind == nunchaku.KindW4A16G128 {
		return f.unpackW4Linear(lm)
	}
	return f.unpackW4A16(lm)
}

// fileLayer is a quantized layer of a file with where its reference weight
// and calibration rows are.
type fileLayer struct {
	meta  nunchaku.LayerMeta
	calib []calibKeys // candidate calibration keys, in preference order (findCalib)
}

// layers lists the file's quantized layers. With an svdq entry they come
// from it; their calibration keys are the one svdq_calib records, then
// those of ref's layer of the same name (the keys quantize looks for). Without one (a file
// another tool wrote) the layers are found by tensor suffix and matched by
// name to ref, the plan of the reference checkpoint, which supplies sizes,
// sources, shift, chunks and calibration keys; ref nil then leaves sizes
// as stored (padded), chunks 1 and no sources.
func (f *qfile) layers(ref *preset.Plan) ([]fileLayer, error) {
	var out []fileLayer
	if f.meta != nil {
		for _, lm := range f.meta.Layers {
			fl := fileLayer{meta: lm}
			if c, ok := f.calib[lm.Name]; ok {
				fl.calib = append(fl.calib, calibKeys{keys: []string{c.Key}, cols: c.Cols})
			}
			if ref != nil {
				if pl, ok := ref.Layer(lm.Name); ok {
					fl.calib = append(fl.calib, planCalibKeys(pl))
				}
			}
			out = append(out, fl)
		}
		return out, nil
	}
	var infos []nunchaku.TensorInfo
	for _, n := range f.r.Names() {
		i, _ := f.r.Info(n)
		infos = append(infos, nunchaku.TensorInfo{Name: n, DType: string(i.DType), Shape: i.Shape})
	}
	for _, s := range nunchaku.Describe(infos) {
		lm := nunchaku.LayerMeta{Name: s.Name, Kind: s.Kind, N: s.N, K: s.K, R: s.R, Precision: s.Precision, DType: s.DType}
		p, _ := quant.ParsePrecision(s.Precision)
		lm.Group = p.GroupSize()
		fl := fileLayer{}
		switch s.Kind {
		case nunchaku.KindW4A16:
			lm.Group, lm.R, lm.Chunks = 64, 0, 1
		case nunchaku.KindW4A16G128:
			lm.Group, lm.R = nunchaku.W4LinearGroup, 0
		}
		if ref != nil {
			pl, ok := ref.Layer(s.Name)
			if !ok {
				return nil, fmt.Errorf("%s: layer %s is not in the reference's %s plan", f.path, s.Name, ref.Family)
			}
			lm.N, lm.K, lm.Sources = pl.N, pl.K, sourceMetas(pl)
			switch s.Kind {
			case nunchaku.KindW4A16:
				lm.Chunks = max(pl.Chunks, 1)
			case nunchaku.KindW4A16G128: // no chunks, no rank, no shift
			default:
				lm.R = min(lm.R, pl.N, pl.K)
				lm.Shifted = pl.Shifted && p == quant.INT4
			}
			fl.calib = []calibKeys{planCalibKeys(pl)}
		}
		fl.meta = lm
		out = append(out, fl)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no quantized layers (no svdq metadata and no qweight with wscales or scales tensors)", f.path)
	}
	return out, nil
}
