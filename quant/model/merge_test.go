package model

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// shardParts quantizes opt as n shards (in reverse order, so no shard
// relies on another having run) and returns the parts' paths.
func shardParts(t *testing.T, opt QuantizeOptions, dir string, n int) []string {
	t.Helper()
	parts := make([]string, n)
	total := 0
	for i := n - 1; i >= 0; i-- {
		o := opt
		o.Shard = Shard{I: i, N: n}
		o.Out = filepath.Join(dir, "part-"+string(rune('0'+i))+".safetensors")
		_, rep := quantizeBytes(t, o)
		if rep.Shard == nil || *rep.Shard != o.Shard {
			t.Fatalf("shard %d/%d: report says shard %v", i, n, rep.Shard)
		}
		total += len(rep.Layers)
		if want := shardPlan(t, opt).ShardLayers(o.Shard); len(rep.Layers) != want || rep.Totals.Layers != want {
			t.Errorf("shard %s: %d layers reported, ShardLayers says %d", o.Shard, len(rep.Layers), want)
		}
		parts[i] = o.Out
	}
	if total != len(shardPlan(t, opt).Layers) {
		t.Errorf("the %d shards quantized %d layers, the plan has %d", n, total, len(shardPlan(t, opt).Layers))
	}
	return parts
}

func shardPlan(t *testing.T, opt QuantizeOptions) *Plan {
	t.Helper()
	p, r, err := QuantizePlan(opt.PlanOptions)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	return p
}

// TestShardsMergeIdentical: n shards merged, in any order, give the bytes
// of one run, on several families, outlier patterns, namings and a
// sharded checkpoint.
func TestShardsMergeIdentical(t *testing.T) {
	for i, m := range shardModelCases(t) {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			opt := fastOptions(m.model, m.calib, filepath.Join(dir, "one.safetensors"))
			want, _ := quantizeBytes(t, opt)
			n := []int{4, 3, 2}[i]
			parts := shardParts(t, opt, dir, n)
			// reversed order
			rev := make([]string, n)
			for j, p := range parts {
				rev[n-1-j] = p
			}
			out := filepath.Join(dir, "merged.safetensors")
			rep, err := Merge(MergeOptions{Parts: rev, Out: out})
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("merge of %d shards differs from one run (%d vs %d bytes)", n, len(got), len(want))
			}
			if rep.Shards != n || len(rep.Layers) != len(shardPlan(t, opt).Layers) {
				t.Errorf("report: %d shards, %d layers", rep.Shards, len(rep.Layers))
			}
		})
	}
}

// TestMergeFaults: merge refuses a damaged or truncated part, a part of
// another model, of other options, a missing, repeated or foreign part
// and an output that is a part, with an error naming the file; --out is
// never written.
func TestMergeFaults(t *testing.T) {
	cases := shardModelCases(t)
	dir := t.TempDir()
	opt := fastOptions(cases[0].model, cases[0].calib, "")
	parts := shardParts(t, opt, dir, 3)
	otherModel := opt
	otherModel.Model, otherModel.Calib = cases[2].model, cases[2].calib
	foreign := shardParts(t, otherModel, t.TempDir(), 3)
	otherOpts := opt
	otherOpts.Iters = 2
	otherOptsParts := shardParts(t, otherOpts, t.TempDir(), 3)
	four := shardParts(t, opt, t.TempDir(), 4)

	damage := func(name string, edit func([]byte) []byte) string {
		b, err := os.ReadFile(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, edit(bytes.Clone(b)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := damage("flipped.safetensors", func(b []byte) []byte { b[len(b)-3] ^= 1; return b })
	truncated := damage("truncated.safetensors", func(b []byte) []byte { return b[:len(b)-100] })
	header := damage("header.safetensors", func(b []byte) []byte {
		return bytes.Replace(b, []byte("svdq-record/1"), []byte("svdq-record/9"), 1)
	})
	journal := filepath.Join(dir, "journal-record.safetensors")
	{ // a journal record, left by a run whose output failed
		o := opt
		o.Out = filepath.Join(t.TempDir(), "q.safetensors")
		interrupted(t, o)
		b, err := os.ReadFile(filepath.Join(WorkDir(o.Out), recordName(0)))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(journal, b, 0o644)
	}

	for _, tc := range []struct {
		name  string
		parts []string
		want  []string // in the error
	}{
		{"flipped bit", []string{parts[0], flipped, parts[2]}, []string{flipped, "damaged"}},
		{"truncated", []string{parts[0], truncated, parts[2]}, []string{truncated}},
		{"unknown format", []string{parts[0], header, parts[2]}, []string{header, "format"}},
		{"another model", []string{parts[0], foreign[1], parts[2]}, []string{foreign[1], "another model"}},
		{"other options", []string{parts[0], otherOptsParts[1], parts[2]}, []string{otherOptsParts[1], "other options"}},
		{"missing", []string{parts[0], parts[2]}, []string{"shard 1/3 missing"}},
		{"duplicated", []string{parts[0], parts[1], parts[1], parts[2]}, []string{parts[1], "both shard 1/3"}},
		{"same shard twice by copy", []string{parts[0], parts[1], damage("copy.safetensors", func(b []byte) []byte { return b }), parts[2]}, []string{"both shard 1/3"}},
		{"split differently", []string{parts[0], parts[1], four[2]}, []string{four[2], "split differently"}},
		{"journal record", []string{parts[0], parts[1], parts[2], journal}, []string{journal, "journal record"}},
		{"not a part", []string{parts[0], parts[1], cases[0].calib}, []string{cases[0].calib, "not an svdq record"}},
		{"none", nil, []string{"no parts"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "q.safetensors")
			_, err := Merge(MergeOptions{Parts: tc.parts, Out: out})
			if err == nil {
				t.Fatal("merge succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			noOutput(t, out)
		})
	}
	t.Run("output is a part", func(t *testing.T) {
		before, _ := os.ReadFile(parts[2])
		_, err := Merge(MergeOptions{Parts: parts, Out: parts[2]})
		if err == nil || !strings.Contains(err.Error(), "also an input") {
			t.Fatalf("err = %v", err)
		}
		if after, _ := os.ReadFile(parts[2]); !bytes.Equal(before, after) {
			t.Fatal("the part was changed")
		}
	})
}
