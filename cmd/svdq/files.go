package main

import (
	"fmt"
	"path/filepath"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant/model"
	"github.com/svdq/svdq/quant/model/iofiles"
	"github.com/urfave/cli/v2"
)

// commandFiles declares, per command (by its full name), the files it
// reads and every path it writes. Before the command's action runs, the
// set is checked (iofiles.Set.Check: no output is an input or written
// twice, every output directory exists and takes a file) and the
// temporary files earlier runs left in the output directories are named
// in warnings. A command that writes nothing has no entry. A flag value
// the declaration cannot read (a malformed --lora) is left out: the
// action reports it.
var commandFiles = map[string]func(c *cli.Context) *iofiles.Set{
	"quantize": func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{NoProbe: c.Bool("dry-run")}
		s.Input("--model", c.String("model"))
		s.Input("--calib", c.String("calib"))
		s.Output("--out", c.String("out"))
		s.OutputStream("--report", c.String("report"))
		return s
	},
	"check": func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{}
		s.Input("--model", c.String("model"))
		s.Input("--reference", c.String("reference"))
		s.Input("--calib", c.String("calib"))
		loraInputs(s, c.StringSlice("lora"))
		s.Output("--plot", c.String("plot"))
		s.Output("--spectrum-out", spectrumOut(c))
		return s
	},
	"convert": func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{}
		if c.NArg() == 2 {
			s.Input("IN", c.Args().Get(0))
			s.Output("OUT", c.Args().Get(1))
		}
		return s
	},
	"unpack": func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{}
		s.Input("--model", c.String("model"))
		if dir := c.String("out"); dir != "" {
			s.OutputMkdir("--out", filepath.Join(dir, model.UnpackFile))
		}
		return s
	},
	"fuse-lora": func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{NoProbe: c.Bool("dry-run")}
		m := c.String("model")
		s.Input("--model", m)
		s.Input("the sidecar of --model", m+lora.SidecarSuffix)
		loraInputs(s, c.StringSlice("lora"))
		if out := c.String("out"); out != "" {
			s.Output("--out", out)
			s.Output("the sidecar of --out", out+lora.SidecarSuffix)
		}
		return s
	},
	"calib merge": mergeFiles("input"),
	"merge":       mergeFiles("part"),
	"synth": func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{}
		if dir := c.String("out"); dir != "" {
			s.OutputMkdir("--out", filepath.Join(dir, synth.ModelFile))
			s.OutputMkdir("--out", filepath.Join(dir, synth.CalibFile))
		}
		return s
	},
}

// mergeFiles declares the files of a merge command (readMergeArgs'
// arguments), each input called what.
func mergeFiles(what string) func(c *cli.Context) *iofiles.Set {
	return func(c *cli.Context) *iofiles.Set {
		s := &iofiles.Set{}
		a, err := parseMergeArgs(c.Args().Slice())
		if err != nil || a.help {
			return s
		}
		for _, p := range a.paths {
			s.Input(what, p)
		}
		s.Output("--out", a.out)
		return s
	}
}

// loraInputs declares the files of --lora FILE[:STRENGTH] values.
func loraInputs(s *iofiles.Set, specs []string) {
	for _, v := range specs {
		if ls, err := model.ParseLoRASpecs([]string{v}); err == nil {
			s.Input("--lora", ls[0].Path)
		}
	}
}

// checkFiles runs the declaration of the named command, if it has one:
// the error of Check, or the warnings about stale temporary files printed
// to c.App.ErrWriter.
func checkFiles(name string, c *cli.Context) error {
	decl := commandFiles[name]
	if decl == nil {
		return nil
	}
	s := decl(c)
	if err := s.Check(); err != nil {
		return err
	}
	for _, w := range s.Stale() {
		fmt.Fprintln(c.App.ErrWriter, "svdq: warning:", w)
	}
	return nil
}
