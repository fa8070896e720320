package safetensors

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Checkpoint is a sharded checkpoint: the shards named by a
// *.safetensors.index.json, opened and cross-checked against the index.
// It is safe for concurrent use.
type Checkpoint struct {
	index  string           // path of the index file
	shards []*File          // sorted by path
	where  map[string]*File // tensor name → shard holding it
	names  []string         // sorted
	meta   map[string]string
}

// Standard file names looked for in a directory, in diffusers' and
// transformers' conventions.
var standardNames = []string{
	"diffusion_pytorch_model.safetensors",
	"diffusion_pytorch_model.safetensors.index.json",
	"model.safetensors",
	"model.safetensors.index.json",
}

// Model subfolders of a diffusers pipeline root that hold the denoiser.
var denoiserDirs = []string{"transformer", "unet"}

// OpenCheckpoint opens a checkpoint in any of these forms:
//
//   - a .safetensors file (returns a *File);
//   - a *.index.json sharded index (returns a *Checkpoint): its weight_map
//     maps tensor names to shard files in the index's directory;
//   - a diffusers pipeline root or Hugging Face release folder with a
//     transformer/ or unet/ subdirectory (not both): that subdirectory,
//     opened as below, whatever .safetensors files lie beside it;
//   - a directory holding one of diffusion_pytorch_model.safetensors,
//     model.safetensors or their .index.json (two of them is ambiguous
//     and an error); else exactly one *.safetensors.index.json; else
//     exactly one *.safetensors file, not counting the VAE
//     (ae.safetensors, vae.safetensors). More than one is an error that
//     names them. Subdirectories other than transformer/ and unet/ (vae/,
//     text_encoder*/) are never looked into.
//
// A sharded index is validated against its shards: every shard exists and
// lies inside the index's directory, every tensor of the weight_map is in
// the shard it names, and every tensor of every shard is in the weight_map
// under that shard.
func OpenCheckpoint(path string) (Reader, error) {
	path, err := resolvePath(path)
	if err != nil {
		return nil, err
	}
	// A failed open returns a nil Reader, not a nil *File or *Checkpoint
	// inside a non-nil interface, so that callers can test it against nil.
	if strings.HasSuffix(path, ".index.json") {
		c, err := OpenIndex(path)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// CheckpointFiles lists the files OpenCheckpoint(path) reads: path itself
// for a .safetensors file; the index and its shards for a sharded
// checkpoint; for a directory, those of the checkpoint it resolves to. It
// reads no tensor header, only the index's weight_map, and does not check
// that the shards exist; a path OpenCheckpoint would reject is an error.
func CheckpointFiles(path string) ([]string, error) {
	path, err := resolvePath(path)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(path, ".index.json") {
		return []string{path}, nil
	}
	weights, err := readIndex(path)
	if err != nil {
		return nil, err
	}
	out := []string{path}
	dir := filepath.Dir(path)
	for _, s := range slices.Sorted(maps.Values(weights)) {
		if p := filepath.Join(dir, filepath.FromSlash(s)); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// resolvePath returns path itself for a file, or the checkpoint file a
// directory resolves to (resolveDir).
func resolvePath(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		return resolveDir(path, true)
	}
	return path, nil
}

// notModel are the .safetensors files of a model folder that are never its
// denoiser: the VAE of a Hugging Face (BFL) release, e.g. ae.safetensors
// beside flux1-dev.safetensors.
var notModel = []string{"ae.safetensors", "vae.safetensors"}

// resolveDir picks the checkpoint file of directory dir (see
// OpenCheckpoint); only a pipeline root (root true) may descend into a
// transformer/ or unet/ subfolder, and it does so before looking at the
// root's own files, so that a stray .safetensors there (a quantized
// output, a single-file release beside its diffusers folders) is not
// taken for the model. Other subfolders (vae/, text_encoder*/) are never
// looked into, and the VAE names of notModel are never the model.
func resolveDir(dir string, root bool) (string, error) {
	if root {
		var sub []string
		for _, name := range denoiserDirs {
			if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.IsDir() {
				sub = append(sub, name)
			}
		}
		switch len(sub) {
		case 1:
			return resolveDir(filepath.Join(dir, sub[0]), false)
		case 2:
			return "", fmt.Errorf("%s: ambiguous diffusers folder: both transformer/ and unet/ (pass one of them)", dir)
		}
	}
	var found []string
	for _, name := range standardNames {
		if fileExists(filepath.Join(dir, name)) {
			found = append(found, name)
		}
	}
	switch len(found) {
	case 1:
		return filepath.Join(dir, found[0]), nil
	case 0:
	default:
		return "", fmt.Errorf("%s: ambiguous checkpoint: both %s and %s", dir, found[0], found[1])
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var index, single, skipped []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir():
		case strings.HasSuffix(name, ".safetensors.index.json"):
			index = append(index, name)
		case slices.Contains(notModel, strings.ToLower(name)):
			skipped = append(skipped, name)
		case strings.HasSuffix(name, ".safetensors"):
			single = append(single, name)
		}
	}
	switch {
	case len(index) == 1:
		return filepath.Join(dir, index[0]), nil
	case len(index) > 1:
		return "", fmt.Errorf("%s: ambiguous checkpoint: %d sharded indexes (%s); pass the model's index", dir, len(index), strings.Join(index, ", "))
	case len(single) == 1:
		return filepath.Join(dir, single[0]), nil
	case len(single) > 1:
		return "", fmt.Errorf("%s: ambiguous checkpoint: %d .safetensors files (%s); pass the model file", dir, len(single), strings.Join(single, ", "))
	}
	vae := ""
	if len(skipped) > 0 {
		vae = fmt.Sprintf(" (%s is the VAE, not the model)", strings.Join(skipped, ", "))
	}
	if !root {
		return "", fmt.Errorf("%s: no .safetensors file or sharded index%s", dir, vae)
	}
	return "", fmt.Errorf("%s: no .safetensors file, sharded index, transformer/ or unet/ folder%s", dir, vae)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// maxIndexSize bounds the size of an index file read into memory.
const maxIndexSize = MaxHeaderSize

// OpenIndex opens the sharded checkpoint described by the index file at
// path ({"metadata": {...}, "weight_map": {name: shard file}}) and checks
// it against the shards' headers (see OpenCheckpoint). The index's own
// "metadata" (e.g. total_size) is not interpreted. Metadata() of the result
// is the union of the shards' __metadata__; where shards disagree on a key,
// the shard whose path sorts first wins.
func OpenIndex(path string) (*Checkpoint, error) {
	weights, err := readIndex(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	byShard := map[string][]string{} // shard file → tensor names the index puts there
	for name, shard := range weights {
		byShard[shard] = append(byShard[shard], name)
	}
	shardNames := slices.Sorted(maps.Keys(byShard))
	for _, s := range shardNames {
		slices.Sort(byShard[s])
		first := byShard[s][0]
		if !filepath.IsLocal(filepath.FromSlash(s)) {
			return nil, &Error{File: path, Tensor: first, Offset: -1,
				Msg: fmt.Sprintf("shard %q is not a path inside %s", s, dir)}
		}
		if !fileExists(filepath.Join(dir, filepath.FromSlash(s))) {
			return nil, &Error{File: path, Tensor: first, Offset: -1,
				Msg: fmt.Sprintf("shard %q does not exist in %s", s, dir)}
		}
	}
	c := &Checkpoint{index: path, where: map[string]*File{}, meta: map[string]string{}}
	for _, s := range shardNames {
		f, err := Open(filepath.Join(dir, filepath.FromSlash(s)))
		if err != nil {
			c.Close()
			return nil, err
		}
		c.shards = append(c.shards, f)
		for _, name := range byShard[s] {
			if _, ok := f.hdr.index[name]; !ok {
				c.Close()
				return nil, &Error{File: f.path, Tensor: name, Offset: -1,
					Msg: fmt.Sprintf("index %s places the tensor in this shard, but the shard has no such tensor", path)}
			}
		}
		for _, info := range f.hdr.infos {
			if owner, ok := weights[info.Name]; !ok || owner != s {
				c.Close()
				msg := fmt.Sprintf("tensor of this shard is missing from index %s", path)
				if ok {
					msg = fmt.Sprintf("tensor of this shard is placed in shard %q by index %s", owner, path)
				}
				return nil, &Error{File: f.path, Tensor: info.Name, Offset: -1, Msg: msg}
			}
			c.where[info.Name] = f
		}
		for k, v := range f.hdr.meta {
			if _, ok := c.meta[k]; !ok {
				c.meta[k] = v
			}
		}
	}
	c.names = slices.Sorted(maps.Keys(c.where))
	return c, nil
}

// readIndex reads the weight_map of an index file, rejecting duplicate
// keys.
func readIndex(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > maxIndexSize {
		return nil, &Error{File: path, Offset: -1,
			Msg: fmt.Sprintf("index is %d bytes, over the limit of %d", st.Size(), maxIndexSize)}
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxIndexSize+1))
	if err != nil {
		return nil, err
	}
	p := newParser(path, 0, buf)
	if i := invalidUTF8(buf); i >= 0 {
		return nil, p.errAt("", int64(i), "index is not valid UTF-8")
	}
	if err := p.open("", "index"); err != nil {
		return nil, err
	}
	var weights map[string]string
	for p.dec.More() {
		at := p.next()
		key, err := p.key("")
		if err != nil {
			return nil, err
		}
		if key != "weight_map" {
			if _, _, err := p.raw(""); err != nil {
				return nil, err
			}
			continue
		}
		if weights != nil {
			return nil, p.errAt("", at, "duplicate weight_map")
		}
		if weights, err = p.stringMap("", "weight_map"); err != nil {
			return nil, err
		}
	}
	if err := p.close("", "index"); err != nil {
		return nil, err
	}
	end := p.next()
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.errAt("", end, "data after the index's JSON object")
	}
	if weights == nil {
		return nil, &Error{File: path, Offset: -1, Msg: "index has no weight_map"}
	}
	return weights, nil
}

// IndexPath returns the path of the index file.
func (c *Checkpoint) IndexPath() string { return c.index }

// Shards returns the shard files, sorted by path.
func (c *Checkpoint) Shards() []*File { return slices.Clone(c.shards) }

// Names returns the tensor names of all shards in sorted order, in a new
// slice.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Info returns the header entry of the named tensor; its File is the shard.
func (c *Checkpoint) Info(name string) (Info, bool) {
	f, ok := c.where[name]
	if !ok {
		return Info{}, false
	}
	return f.Info(name)
}

// Bytes returns the named tensor's bytes from its shard (see File.Bytes).
func (c *Checkpoint) Bytes(name string) ([]byte, error) {
	f, ok := c.where[name]
	if !ok {
		return nil, &Error{File: c.index, Tensor: name, Offset: -1, Msg: "no such tensor"}
	}
	return f.Bytes(name)
}

// Metadata returns a copy of the merged shard metadata (see OpenIndex).
func (c *Checkpoint) Metadata() map[string]string { return maps.Clone(c.meta) }

// Close closes every shard and returns their errors joined.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.shards {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
