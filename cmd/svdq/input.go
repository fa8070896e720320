package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

// dtypeCounts formats a dtype → count map, most frequent first:
// "BF16 ×300, F32 ×4".
func dtypeCounts(m map[string]int) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// printInput prints how the checkpoint was read and what was written:
//
//	input: safetensors, dtypes found: F8_E4M3 ×304, F32 ×304, BF16 ×200
//	left out (all-in-one file): vae (VAE, 244 tensors, 160.0 MiB), clip_l (text encoder, 196 tensors, 235.7 MiB)
//	  keep one with: svdq quantize --model FILE --extract-component NAME --out NAME.safetensors
//	dequantized: 304 tensors, ComfyUI scaled FP8 (608 scale and marker tensors read, not written)
//	output dtypes: I8 ×304, BF16 ×820, F32 ×10
func printInput(w io.Writer, s *model.InputSummary) {
	if s == nil {
		return
	}
	if len(s.Found) > 0 {
		fmt.Fprintf(w, "input: %s, dtypes found: %s\n", s.Format, dtypeCounts(s.Found))
	}
	if len(s.LeftOut) > 0 {
		var parts []string
		for _, c := range s.LeftOut {
			parts = append(parts, fmt.Sprintf("%s (%s, %d tensor%s, %s)", c.Name, c.Kind, c.Tensors, plural(c.Tensors), human(c.Bytes)))
		}
		fmt.Fprintf(w, "left out (all-in-one file): %s\n", strings.Join(parts, ", "))
		fmt.Fprintf(w, "  keep one with: svdq quantize --model FILE --extract-component NAME --out NAME.safetensors\n")
	}
	for _, d := range s.Dequant {
		extra := ""
		if d.Consumed > 0 {
			extra = fmt.Sprintf(" (%d scale and marker tensors read, not written)", d.Consumed)
		}
		if d.Note != "" {
			extra += " (" + d.Note + ")"
		}
		fmt.Fprintf(w, "dequantized: %d tensors, %s%s\n", d.Tensors, d.Scheme, extra)
	}
	for _, e := range s.GGUF {
		fmt.Fprintf(w, "GGUF %s own error (estimate, rounding on its grid): %.2f%% of the weights' norm\n", e.Type, 100*e.RelError)
	}
	for _, m := range s.Warns {
		fmt.Fprintf(w, "warning: %s\n", m)
	}
	if len(s.Written) > 0 {
		fmt.Fprintf(w, "output dtypes: %s\n", dtypeCounts(s.Written))
	}
}

// extractAction is quantize --extract-component: one component of an
// all-in-one checkpoint to --out, nothing quantized.
func extractAction(c *cli.Context, name string) error {
	out := c.String("out")
	switch {
	case c.Bool("dry-run"):
		return fmt.Errorf("quantize: --extract-component writes --out, --dry-run writes nothing: pass one of them")
	case out == "":
		return fmt.Errorf("quantize: --extract-component needs --out")
	}
	comp, err := model.ExtractComponent(c.String("model"), name, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote %s: component %s (%s), %d tensors, %s, as stored\n", out, comp.Name, comp.Kind, comp.Tensors, human(comp.Bytes))
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
