package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
)

// Records are the one on-disk form of finished quantization work, shared
// by resume (journal.go), shards (shard.go) and merge (merge.go). A record
// file is a safetensors file holding, under the output's tensor names
// (<layer>.<suffix>), the packed tensors of one or more finished layers,
// and under the metadata key MetaRecord a JSON recordHeader:
//
//	{"format":"svdq-record/1",
//	 "inputs":{"model_sha256":…,"calib_sha256":…,"options_sha256":…,"version":"svdq 0.1.0"},
//	 "layers":[{"index":3,"meta":{…svdq layer entry…},"report":{…},"tensors":["qweight",…],"sha256":…}],
//	 "shard":{"i":0,"n":4}, "outline":{…}, "kept":[{"name":…,"sha256":…}]}
//
// A journal record (one per layer, in the work directory beside --out)
// has one layer and no shard, outline or kept tensors; a part (the output
// of --shard i/n) has the shard's layers, the outline of the whole output
// (outline.go) and, for shard 0, the kept 16-bit tensors. Every layer and
// kept tensor carries a SHA-256 of its bytes (tensorDigest), so a damaged
// record is found before its bytes reach an output, and the inputs say
// what it was computed from, so that work from other inputs or options is
// never reused.

// MetaRecord is the metadata key of a record's header.
const MetaRecord = "svdq_record"

// recordFormat is the header's format value; a reader refuses others.
const recordFormat = "svdq-record/1"

// Inputs identify what a quantization was computed from: SHA-256 digests
// of the checkpoint's tensors (checkpointDigest), of the calibration
// file's tensors and metadata, and of the options that change the output
// (optionsDigest), and the tool version that wrote it.
type Inputs struct {
	Model   string `json:"model_sha256"`
	Calib   string `json:"calib_sha256"`
	Options string `json:"options_sha256"`
	Version string `json:"version"`
}

// differs says how b differs from a ("" when equal), in words for an
// error message: "another model", "another calibration file", ...
func (a Inputs) differs(b Inputs) string {
	switch {
	case a.Model != b.Model:
		return fmt.Sprintf("another model (tensors sha256 %.12s…, not %.12s…)", b.Model, a.Model)
	case a.Calib != b.Calib:
		return fmt.Sprintf("another calibration file (sha256 %.12s…, not %.12s…)", b.Calib, a.Calib)
	case a.Options != b.Options:
		return fmt.Sprintf("other options (sha256 %.12s…, not %.12s…)", b.Options, a.Options)
	case a.Version != b.Version:
		return fmt.Sprintf("another svdq version (%q, not %q)", b.Version, a.Version)
	}
	return ""
}

// layerRecord is one finished layer of a record.
type layerRecord struct {
	Index   int                `json:"index"` // in the plan (outline) order
	Meta    nunchaku.LayerMeta `json:"meta"`  // its entry of the svdq metadata
	Report  LayerReport        `json:"report"`
	Tensors []string           `json:"tensors"` // suffixes, in packed order
	SHA256  string             `json:"sha256"`  // tensorDigest of the tensors in that order
}

// keptRecord is one kept 16-bit tensor of a part.
type keptRecord struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"` // tensorDigest of the tensor alone
}

// recordHeader is the MetaRecord value.
type recordHeader struct {
	Format  string        `json:"format"`
	Inputs  Inputs        `json:"inputs"`
	Shard   *Shard        `json:"shard,omitempty"`
	Outline *outline      `json:"outline,omitempty"`
	Layers  []layerRecord `json:"layers"`
	Kept    []keptRecord  `json:"kept,omitempty"`
}

// tensorDigest is the hex SHA-256 over ts in order, each as
//
//	<suffix> NUL <dtype> NUL <shape, comma-separated> NUL <byte length, 8 bytes LE> <bytes>
//
// It covers every byte of every tensor (nunchaku.LayerHash covers only the
// suffixes nunchaku knows).
func tensorDigest(ts []nunchaku.Tensor) string {
	h := sha256.New()
	var line []byte
	for _, t := range ts {
		line = appendTensorLine(line[:0], t.Suffix, t.DType, t.Shape)
		line = binary.LittleEndian.AppendUint64(line, uint64(len(t.Data)))
		h.Write(line)
		h.Write(t.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// appendTensorLine appends "name NUL dtype NUL shape NUL" (the shape
// comma-separated) to b: the head of a tensor's line in tensorDigest and
// checkpointDigest.
func appendTensorLine(b []byte, name, dtype string, shape []int64) []byte {
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, dtype...)
	b = append(b, 0)
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, d, 10)
	}
	return append(b, 0)
}

// recordTensors returns the safetensors tensors of a layer's packed
// tensors, named <layer>.<suffix>.
func recordTensors(layer string, ts []nunchaku.Tensor) []safetensors.Tensor {
	out := make([]safetensors.Tensor, len(ts))
	for i, t := range ts {
		out[i] = safetensors.Tensor{Spec: safetensors.Spec{Name: layer + "." + t.Suffix, DType: safetensors.DType(t.DType), Shape: t.Shape}, Data: t.Data}
	}
	return out
}

// newLayerRecord describes a finished layer's packed tensors ts.
func newLayerRecord(index int, meta nunchaku.LayerMeta, rep LayerReport, ts []nunchaku.Tensor) layerRecord {
	lr := layerRecord{Index: index, Meta: meta, Report: rep, SHA256: tensorDigest(ts)}
	for _, t := range ts {
		lr.Tensors = append(lr.Tensors, t.Suffix)
	}
	return lr
}

// recordMeta is the metadata of a record file with header h.
func recordMeta(h *recordHeader) (map[string]string, error) {
	h.Format = recordFormat
	b, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	return map[string]string{MetaRecord: string(b)}, nil
}

// recordFile is an open record file (a journal record or a part).
type recordFile struct {
	path string
	f    safetensors.Reader
	hdr  recordHeader
}

// openRecord opens a record file and checks its structure: a header of
// this format, every tensor a layer or kept entry names present, no other
// tensor, indices and names not repeated. The bytes are checked by
// layerTensors and keptTensor as they are read.
func openRecord(path string) (*recordFile, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	return newRecordFile(path, f)
}

// newRecordFile checks the structure of the open record f (openRecord);
// f is closed on error.
func newRecordFile(path string, f safetensors.Reader) (*recordFile, error) {
	rf := &recordFile{path: path, f: f}
	if err := rf.parse(); err != nil {
		f.Close()
		return nil, err
	}
	return rf, nil
}

func (rf *recordFile) parse() error {
	raw, ok := rf.f.Metadata()[MetaRecord]
	if !ok {
		return fmt.Errorf("%s: not an svdq record or part (no %s metadata)", rf.path, MetaRecord)
	}
	if err := json.Unmarshal([]byte(raw), &rf.hdr); err != nil {
		return fmt.Errorf("%s: metadata %s: %v", rf.path, MetaRecord, err)
	}
	h := &rf.hdr
	if h.Format != recordFormat {
		return fmt.Errorf("%s: metadata %s: format %q, want %q", rf.path, MetaRecord, h.Format, recordFormat)
	}
	seen := map[string]bool{}
	claim := func(name string) error {
		if seen[name] {
			return fmt.Errorf("%s: tensor %q listed twice in %s", rf.path, name, MetaRecord)
		}
		seen[name] = true
		if _, ok := rf.f.Info(name); !ok {
			return fmt.Errorf("%s: no tensor %q (listed in %s)", rf.path, name, MetaRecord)
		}
		return nil
	}
	idx := map[int]bool{}
	for _, l := range h.Layers {
		if l.Meta.Name == "" || len(l.Tensors) == 0 || idx[l.Index] || l.Index < 0 {
			return fmt.Errorf("%s: metadata %s: bad layer entry %q (index %d, %d tensors)", rf.path, MetaRecord, l.Meta.Name, l.Index, len(l.Tensors))
		}
		idx[l.Index] = true
		for _, s := range l.Tensors {
			if err := claim(l.Meta.Name + "." + s); err != nil {
				return err
			}
		}
	}
	for _, k := range h.Kept {
		if err := claim(k.Name); err != nil {
			return err
		}
	}
	for _, n := range rf.f.Names() {
		if !seen[n] {
			return fmt.Errorf("%s: tensor %q is not listed in %s", rf.path, n, MetaRecord)
		}
	}
	return nil
}

// Close closes the file.
func (rf *recordFile) Close() error { return rf.f.Close() }

// layerTensors reads a layer's packed tensors and checks them against the
// layer's digest; a mismatch is an error naming the file and the layer.
func (rf *recordFile) layerTensors(l *layerRecord) ([]nunchaku.Tensor, error) {
	ts := make([]nunchaku.Tensor, len(l.Tensors))
	for i, s := range l.Tensors {
		name := l.Meta.Name + "." + s
		info, _ := rf.f.Info(name)
		data, err := rf.f.Bytes(name)
		if err != nil {
			return nil, err
		}
		ts[i] = nunchaku.Tensor{Suffix: s, DType: string(info.DType), Shape: slices.Clone(info.Shape), Data: data}
	}
	if got := tensorDigest(ts); got != l.SHA256 {
		return nil, fmt.Errorf("%s: layer %s: its tensors' sha256 is %.12s…, the record says %.12s…: the file is damaged",
			rf.path, l.Meta.Name, got, l.SHA256)
	}
	return ts, nil
}

// keptTensor reads a kept tensor and checks it against its digest.
func (rf *recordFile) keptTensor(k *keptRecord) ([]byte, error) {
	info, _ := rf.f.Info(k.Name)
	data, err := rf.f.Bytes(k.Name)
	if err != nil {
		return nil, err
	}
	if got := keptDigest(k.Name, string(info.DType), info.Shape, data); got != k.SHA256 {
		return nil, fmt.Errorf("%s: tensor %q: sha256 %.12s…, the record says %.12s…: the file is damaged", rf.path, k.Name, got, k.SHA256)
	}
	return data, nil
}

// keptDigest is tensorDigest of one kept tensor.
func keptDigest(name, dtype string, shape []int64, data []byte) string {
	return tensorDigest([]nunchaku.Tensor{{Suffix: name, DType: dtype, Shape: shape, Data: data}})
}
