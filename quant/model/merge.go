package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant/model/iofiles"
)

// MergeOptions configure Merge.
type MergeOptions struct {
	Parts []string // the parts written by quantize --shard I/N, in any order
	Out   string   // the output .safetensors

	// wrapWrites, when set, wraps every file write (tests: a full disk).
	wrapWrites func(path string, f io.WriterAt) io.WriterAt
}

// MergeReport is the outcome of Merge.
type MergeReport struct {
	Shards   int           `json:"shards"`
	Layers   []LayerReport `json:"layers"` // plan order, as the shards reported them
	Kept     int           `json:"kept"`
	Family   string        `json:"family"`
	OutBytes int64         `json:"out_bytes"`
	Seconds  float64       `json:"seconds"`
}

// Merge joins the N parts of a sharded quantization into the file a
// single run writes, byte for byte. It first checks, with errors naming
// the files: that each is a part (a record file with a shard and an
// outline), all computed from the same inputs, options and svdq version
// and dealt into the same N shards; that no shard is missing or given
// twice; that each holds exactly the layers its shard was dealt (and
// shard 0 the kept tensors). Every tensor is checked against its SHA-256
// as it is copied; on any error the output does not exist.
func Merge(opt MergeOptions) (*MergeReport, error) {
	start := time.Now()
	if len(opt.Parts) == 0 {
		return nil, errors.New("merge: no parts")
	}
	if opt.Out == "" {
		return nil, errors.New("merge: no output path")
	}
	s := iofiles.Set{NoProbe: true}
	for _, p := range opt.Parts {
		s.Input("part", p)
	}
	s.Output("--out", opt.Out)
	if err := s.Check(); err != nil {
		return nil, err
	}
	var rfs []*recordFile
	defer func() {
		for _, rf := range rfs {
			rf.Close()
		}
	}()
	for _, p := range opt.Parts {
		rf, err := openRecord(p)
		if err != nil {
			return nil, err
		}
		rfs = append(rfs, rf)
		if rf.hdr.Shard == nil || rf.hdr.Outline == nil {
			return nil, fmt.Errorf("%s: a journal record, not a part (parts are written by svdq quantize --shard I/N)", p)
		}
	}
	first := rfs[0]
	n := first.hdr.Shard.N
	olJSON, _ := json.Marshal(first.hdr.Outline)
	byShard := make([]*recordFile, n)
	for _, rf := range rfs {
		h := rf.hdr
		if d := first.hdr.Inputs.differs(h.Inputs); d != "" {
			return nil, fmt.Errorf("%s: computed from %s than %s", rf.path, d, first.path)
		}
		if h.Shard.N != n || h.Shard.I < 0 || h.Shard.I >= n {
			return nil, fmt.Errorf("%s: shard %s, but %s is shard %s: the parts come from runs split differently", rf.path, h.Shard, first.path, first.hdr.Shard)
		}
		if b, _ := json.Marshal(h.Outline); !bytes.Equal(b, olJSON) {
			return nil, fmt.Errorf("%s: its outline of the output differs from %s's", rf.path, first.path)
		}
		if o := byShard[h.Shard.I]; o != nil {
			return nil, fmt.Errorf("%s and %s are both shard %s", o.path, rf.path, h.Shard)
		}
		byShard[h.Shard.I] = rf
	}
	var missing []string
	for i, rf := range byShard {
		if rf == nil {
			missing = append(missing, Shard{I: i, N: n}.String())
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("merge: shard %s missing: %d parts given, of %d", strings.Join(missing, ", "), len(rfs), n)
	}
	ol := first.hdr.Outline
	if len(ol.Units) != len(ol.Costs) || len(ol.Tensors) != len(ol.Layers) {
		return nil, fmt.Errorf("%s: metadata %s: malformed outline", first.path, MetaRecord)
	}
	deal := assignShards(ol.Costs, n)
	for i, rf := range byShard {
		var want []int
		for _, ui := range deal[i] {
			if ui < 0 || ui >= len(ol.Units) {
				return nil, fmt.Errorf("%s: metadata %s: malformed outline", rf.path, MetaRecord)
			}
			want = append(want, ol.Units[ui]...)
		}
		slices.Sort(want)
		var have []int
		for _, l := range rf.hdr.Layers {
			have = append(have, l.Index)
		}
		slices.Sort(have)
		if !slices.Equal(have, want) {
			return nil, fmt.Errorf("%s: shard %s holds layers %s, its deal is layers %s", rf.path, rf.hdr.Shard, short(have), short(want))
		}
		var kept []string
		for _, k := range rf.hdr.Kept {
			kept = append(kept, k.Name)
		}
		var wantKept []string // shard 0 carries the kept tensors
		if i == 0 {
			wantKept = ol.Kept
		}
		if !slices.Equal(kept, wantKept) {
			return nil, fmt.Errorf("%s: shard %s holds %d kept tensors, want %d", rf.path, rf.hdr.Shard, len(kept), len(wantKept))
		}
	}

	var wopts []safetensors.Option
	if opt.wrapWrites != nil {
		wopts = append(wopts, safetensors.WrapWrites(opt.wrapWrites))
	}
	a, err := ol.create(opt.Out, wopts...)
	if err != nil {
		return nil, err
	}
	defer a.abort()
	rep := &MergeReport{Shards: n, Kept: len(ol.Kept), Family: ol.Head.Family, Layers: make([]LayerReport, len(ol.Layers))}
	for _, rf := range byShard {
		for i := range rf.hdr.Layers {
			lr := &rf.hdr.Layers[i]
			ts, err := rf.layerTensors(lr)
			if err != nil {
				return nil, err
			}
			if err := a.putLayer(lr, ts); err != nil {
				return nil, fmt.Errorf("%s: %v", rf.path, err)
			}
			rep.Layers[lr.Index] = lr.Report
		}
		for i := range rf.hdr.Kept {
			k := &rf.hdr.Kept[i]
			data, err := rf.keptTensor(k)
			if err != nil {
				return nil, err
			}
			info, _ := rf.f.Info(k.Name)
			if s := ol.spec(k.Name); s.DType != info.DType || !slices.Equal(s.Shape, info.Shape) {
				return nil, fmt.Errorf("%s: tensor %q is %s %v, the outline's is %s %v", rf.path, k.Name, info.DType, info.Shape, s.DType, s.Shape)
			}
			if err := a.w.Write(k.Name, data); err != nil {
				return nil, err
			}
		}
	}
	if err := a.close(); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(opt.Out); err == nil {
		rep.OutBytes = fi.Size()
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// short prints a list of layer indices, at most 8.
func short(v []int) string {
	if len(v) > 8 {
		return fmt.Sprintf("%v… (%d)", v[:8], len(v))
	}
	return fmt.Sprint(v)
}
