package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// shardSet is a small sharded checkpoint written into a directory.
type shardSet struct {
	tensors []Tensor
	shardOf map[string]string // tensor → shard file
}

func newShardSet() shardSet {
	ts := randomTensors(7)
	s := shardSet{tensors: ts, shardOf: map[string]string{}}
	for i, tt := range ts {
		s.shardOf[tt.Name] = []string{"m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"}[i%2]
	}
	return s
}

// write writes the shards and the index (built from weightMap, which
// defaults to s.shardOf) under dir; it returns the index path.
func (s shardSet) write(t *testing.T, dir, indexName string, weightMap map[string]string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	byShard := map[string][]Tensor{}
	for _, tt := range s.tensors {
		byShard[s.shardOf[tt.Name]] = append(byShard[s.shardOf[tt.Name]], tt)
	}
	for shard, ts := range byShard {
		if err := WriteFile(filepath.Join(dir, shard), ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	if weightMap == nil {
		weightMap = s.shardOf
	}
	idx, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 123}, "weight_map": weightMap})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, indexName)
	if err := os.WriteFile(p, idx, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkAll asserts r holds exactly s's tensors.
func (s shardSet) checkAll(t *testing.T, r Reader) {
	t.Helper()
	var names []string
	for _, tt := range s.tensors {
		names = append(names, tt.Name)
		info, ok := r.Info(tt.Name)
		if !ok || info.DType != tt.DType || !slices.Equal(info.Shape, tt.Shape) {
			t.Errorf("Info(%q) = %+v, %v", tt.Name, info, ok)
		}
		if _, ok := s.shardOf[tt.Name]; ok && filepath.Base(info.File) != s.shardOf[tt.Name] {
			t.Errorf("Info(%q).File = %s, want shard %s", tt.Name, info.File, s.shardOf[tt.Name])
		}
		if b, err := r.Bytes(tt.Name); err != nil || !bytes.Equal(b, tt.Data) {
			t.Errorf("Bytes(%q) = %v, %v", tt.Name, b, err)
		}
	}
	slices.Sort(names)
	if got := r.Names(); !slices.Equal(got, names) {
		t.Errorf("Names() = %q, want %q", got, names)
	}
	if _, err := r.Bytes("nope"); err == nil {
		t.Error("Bytes of an unknown tensor succeeded")
	}
}

func copyWeights(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestShardedIndex(t *testing.T) {
	s := newShardSet()
	idx := s.write(t, t.TempDir(), "m.safetensors.index.json", nil)
	for _, open := range []func(string) (Reader, error){
		OpenCheckpoint,
		func(p string) (Reader, error) { return OpenIndex(p) },
		func(p string) (Reader, error) { return OpenCheckpoint(filepath.Dir(p)) },
	} {
		r, err := open(idx)
		if err != nil {
			t.Fatal(err)
		}
		c, ok := r.(*Checkpoint)
		if !ok || len(c.Shards()) != 2 || c.IndexPath() != idx {
			t.Errorf("got %T, want a *Checkpoint of 2 shards from %s", r, idx)
		}
		s.checkAll(t, r)
		if r.Metadata()["format"] != "pt" {
			t.Errorf("metadata = %q", r.Metadata())
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestShardedIndexErrors(t *testing.T) {
	s := newShardSet()
	first := s.tensors[0].Name // in shard 1
	second := s.tensors[1].Name
	for _, c := range []struct {
		name    string
		weights func(map[string]string) map[string]string
		prepare func(dir string)
		file    string // base name of Error.File
		tensor  string
		msg     string
	}{
		{name: "missing shard", prepare: func(dir string) { os.Remove(filepath.Join(dir, "m-00002-of-00002.safetensors")) },
			file: "m.safetensors.index.json", tensor: second, msg: `shard "m-00002-of-00002.safetensors" does not exist`},
		{name: "index names a tensor absent from the shard", weights: func(m map[string]string) map[string]string {
			m["ghost"] = "m-00001-of-00002.safetensors"
			return m
		}, file: "m-00001-of-00002.safetensors", tensor: "ghost", msg: "shard has no such tensor"},
		{name: "shard tensor missing from the index", weights: func(m map[string]string) map[string]string {
			delete(m, first)
			return m
		}, file: "m-00001-of-00002.safetensors", tensor: first, msg: "missing from index"},
		{name: "index places a tensor in the wrong shard", weights: func(m map[string]string) map[string]string {
			m[second] = "m-00001-of-00002.safetensors"
			return m
		}, file: "m-00001-of-00002.safetensors", tensor: second, msg: "shard has no such tensor"},
		{name: "shard outside the directory", weights: func(m map[string]string) map[string]string {
			m[first] = "../m-00001-of-00002.safetensors"
			return m
		}, file: "m.safetensors.index.json", tensor: first, msg: "is not a path inside"},
		{name: "duplicate key", prepare: func(dir string) {
			p := filepath.Join(dir, "m.safetensors.index.json")
			os.WriteFile(p, []byte(`{"weight_map":{"a":"m-00001-of-00002.safetensors","a":"m-00002-of-00002.safetensors"}}`), 0o644)
		}, file: "m.safetensors.index.json", msg: `weight_map: duplicate key "a"`},
		{name: "no weight_map", prepare: func(dir string) {
			os.WriteFile(filepath.Join(dir, "m.safetensors.index.json"), []byte(`{"metadata":{}}`), 0o644)
		}, file: "m.safetensors.index.json", msg: "no weight_map"},
		{name: "corrupt shard", prepare: func(dir string) {
			os.WriteFile(filepath.Join(dir, "m-00002-of-00002.safetensors"), []byte("garbage"), 0o644)
		}, file: "m-00002-of-00002.safetensors", msg: "shorter than the 8-byte header length"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var weights map[string]string
			if c.weights != nil {
				weights = c.weights(copyWeights(s.shardOf))
			}
			idx := s.write(t, dir, "m.safetensors.index.json", weights)
			if c.prepare != nil {
				c.prepare(dir)
			}
			r, err := OpenCheckpoint(idx)
			if err == nil {
				r.Close()
				t.Fatal("accepted")
			}
			var se *Error
			if !errors.As(err, &se) || filepath.Base(se.File) != c.file || se.Tensor != c.tensor || !strings.Contains(se.Msg, c.msg) {
				t.Errorf("err = %v\nwant *Error in %s, tensor %q, containing %q", err, c.file, c.tensor, c.msg)
			}
		})
	}
}

func TestDiffusersFolders(t *testing.T) {
	s := newShardSet()
	single := shardSet{tensors: s.tensors, shardOf: map[string]string{}}
	writeSingle := func(t *testing.T, p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(p, s.tensors, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, root string)
		open  string // relative to root
		set   shardSet
	}{
		{"pipeline root, single transformer file", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors"))
			os.WriteFile(filepath.Join(root, "model_index.json"), []byte(`{}`), 0o644)
			writeSingle(t, filepath.Join(root, "text_encoder", "model.safetensors"))
		}, ".", single},
		{"pipeline root, sharded unet", func(t *testing.T, root string) {
			s.write(t, filepath.Join(root, "unet"), "diffusion_pytorch_model.safetensors.index.json", nil)
		}, ".", s},
		{"model folder with a variant beside the standard file", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors"))
			os.WriteFile(filepath.Join(root, "transformer", "diffusion_pytorch_model.fp16.safetensors"), []byte("junk"), 0o644)
		}, "transformer", single},
		{"directory with one oddly named file", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "flux1-dev-svdq-int4.safetensors"))
		}, ".", single},
		{"directory with model.safetensors among others", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "model.safetensors"))
			os.WriteFile(filepath.Join(root, "other.safetensors"), []byte("junk"), 0o644)
		}, ".", single},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.setup(t, root)
			r, err := OpenCheckpoint(filepath.Join(root, c.open))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			c.set.checkAll(t, r)
		})
	}

	for _, c := range []struct {
		name  string
		setup func(t *testing.T, root string)
		msg   string
	}{
		{"empty directory", func(t *testing.T, root string) {}, "no .safetensors file"},
		{"two files", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "a.safetensors"))
			writeSingle(t, filepath.Join(root, "b.safetensors"))
		}, "ambiguous checkpoint: 2 .safetensors files"},
		{"single and index", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "model.safetensors"))
			os.WriteFile(filepath.Join(root, "model.safetensors.index.json"), []byte(`{}`), 0o644)
		}, "ambiguous checkpoint: both model.safetensors and model.safetensors.index.json"},
		{"transformer and unet", func(t *testing.T, root string) {
			writeSingle(t, filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors"))
			writeSingle(t, filepath.Join(root, "unet", "diffusion_pytorch_model.safetensors"))
		}, "both transformer/ and unet/"},
		{"empty transformer folder", func(t *testing.T, root string) {
			os.MkdirAll(filepath.Join(root, "transformer", "transformer"), 0o755)
		}, "no .safetensors file or sharded index"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.setup(t, root)
			r, err := OpenCheckpoint(root)
			if err == nil {
				r.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), root) {
				t.Errorf("err = %v, want the directory and %q", err, c.msg)
			}
		})
	}
}

// TestModelFolderDetection: folders as users lay them out (issue 24). The
// denoiser is transformer/ or unet/ when there is one, whatever lies
// beside it; the VAE (ae.safetensors) is never the model; an ambiguous
// folder is an error naming the candidates.
func TestModelFolderDetection(t *testing.T) {
	model := shardSet{tensors: randomTensors(7), shardOf: map[string]string{}}
	other := randomTensors(8) // a VAE, a text encoder, a stray output
	write := func(t *testing.T, p string, ts []Tensor) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(p, ts, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, root string)
		want  string // the file CheckpointFiles names, relative to root
	}{
		{"Hugging Face root: flux1-dev.safetensors, ae.safetensors and transformer/", func(t *testing.T, root string) {
			write(t, filepath.Join(root, "flux1-dev.safetensors"), other)
			write(t, filepath.Join(root, "ae.safetensors"), other)
			write(t, filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors"), model.tensors)
			write(t, filepath.Join(root, "vae", "diffusion_pytorch_model.safetensors"), other)
			write(t, filepath.Join(root, "text_encoder_2", "model.safetensors"), other)
			os.WriteFile(filepath.Join(root, "model_index.json"), []byte(`{}`), 0o644)
		}, "transformer/diffusion_pytorch_model.safetensors"},
		{"pipeline root with a stray output beside transformer/", func(t *testing.T, root string) {
			write(t, filepath.Join(root, "flux-int4.safetensors"), other)
			write(t, filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors"), model.tensors)
		}, "transformer/diffusion_pytorch_model.safetensors"},
		{"one model file and ae.safetensors", func(t *testing.T, root string) {
			write(t, filepath.Join(root, "ae.safetensors"), other)
			write(t, filepath.Join(root, "flux1-dev.safetensors"), model.tensors)
		}, "flux1-dev.safetensors"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.setup(t, root)
			r, err := OpenCheckpoint(root)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			model.checkAll(t, r)
			files, err := CheckpointFiles(root)
			if want := filepath.Join(root, filepath.FromSlash(c.want)); err != nil || len(files) != 1 || files[0] != want {
				t.Errorf("CheckpointFiles = %q, %v; want %s", files, err, want)
			}
		})
	}

	for _, c := range []struct {
		name  string
		setup func(t *testing.T, root string)
		msgs  []string
	}{
		{"two unrelated files, no subfolder", func(t *testing.T, root string) {
			write(t, filepath.Join(root, "flux1-dev.safetensors"), model.tensors)
			write(t, filepath.Join(root, "flux1-schnell.safetensors"), other)
			write(t, filepath.Join(root, "ae.safetensors"), other)
		}, []string{"ambiguous checkpoint: 2 .safetensors files", "flux1-dev.safetensors", "flux1-schnell.safetensors"}},
		{"only the VAE", func(t *testing.T, root string) {
			write(t, filepath.Join(root, "ae.safetensors"), other)
		}, []string{"no .safetensors file", "ae.safetensors is the VAE"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.setup(t, root)
			r, err := OpenCheckpoint(root)
			if err == nil {
				r.Close()
				t.Fatal("accepted")
			}
			for _, m := range c.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("err = %v, want %q", err, m)
				}
			}
			if strings.Contains(err.Error(), "ae.safetensors,") || strings.Contains(err.Error(), ", ae.safetensors") {
				t.Errorf("err = %v names the VAE as a candidate", err)
			}
		})
	}
}
