package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/svdq/svdq/calib"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:  "calib",
		Usage: "work with svdq-calib/1 calibration files",
		Subcommands: []*cli.Command{{
			Name:      "merge",
			Usage:     "merge calibration files of disjoint token sets into one",
			ArgsUsage: "A.safetensors B.safetensors ...",
			Description: "Combines svdq-calib/1 files layer by layer: per-channel absmax is the maximum,\n" +
				"token counts add, and the sample rows are a fair reservoir merge (every token of the\n" +
				"union kept with the same probability, using the counts). A layer present in one file\n" +
				"is copied. Files must agree on each layer's width. Nothing is written on error.\n\n" +
				"Example: svdq calib merge run1/calib.safetensors run2/calib.safetensors --out calib.safetensors",
			// Flags may follow the files (as in the example), which urfave/cli
			// does not parse: the action reads the arguments itself.
			SkipFlagParsing: true,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "out", Usage: "output `FILE` (required; its directory must exist; not one of the inputs)"},
				&cli.Uint64Flag{Name: "seed", Usage: "seed of the reservoir merge"},
			},
			Action: calibMergeAction,
		}},
	})
}

// mergeArgs are the parsed arguments of calib merge.
type mergeArgs struct {
	paths []string
	out   string
	seed  uint64
	help  bool
}

// parseMergeArgs reads files and the --out/--seed flags in any order
// ("--out F", "--out=F", one or two dashes); "--" ends the flags.
func parseMergeArgs(args []string) (mergeArgs, error) {
	var a mergeArgs
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.paths = append(a.paths, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			a.paths = append(a.paths, arg)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch name {
		case "h", "help":
			a.help = true
			continue
		case "out", "seed":
		default:
			return a, fmt.Errorf("unknown flag %s", arg)
		}
		if !hasVal {
			if i+1 == len(args) {
				return a, fmt.Errorf("flag %s needs a value", arg)
			}
			i++
			val = args[i]
		}
		if name == "out" {
			a.out = val
		} else {
			seed, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return a, fmt.Errorf("--seed %q: not an unsigned integer", val)
			}
			a.seed = seed
		}
	}
	return a, nil
}

// readMergeArgs reads the arguments of command cmd (a merge: FILE...
// --out FILE, flags parsed by parseMergeArgs; --seed only when seed):
// ok false, with a nil error, when it showed the help instead. none names
// the missing files in the error for none given.
func readMergeArgs(c *cli.Context, cmd, none, usage string, seed bool) (a mergeArgs, ok bool, err error) {
	a, err = parseMergeArgs(c.Args().Slice())
	if err == nil && !seed && a.seed != 0 {
		err = fmt.Errorf("unknown flag --seed")
	}
	if err != nil {
		return a, false, fmt.Errorf("%s: %v", cmd, err)
	}
	if a.help {
		return a, false, cli.ShowSubcommandHelp(c)
	}
	if len(a.paths) == 0 {
		return a, false, fmt.Errorf("%s: no %s (%s)", cmd, none, usage)
	}
	if a.out == "" {
		return a, false, fmt.Errorf("%s: --out is required (%s)", cmd, usage)
	}
	return a, true, nil
}

func calibMergeAction(c *cli.Context) error {
	a, ok, err := readMergeArgs(c, "calib merge", "input files",
		"usage: svdq calib merge A.safetensors B.safetensors ... --out C.safetensors", true)
	if !ok {
		return err
	}
	paths, out := a.paths, a.out
	start := time.Now()
	if err := calib.MergeFiles(paths, out, a.seed); err != nil {
		return fmt.Errorf("calib merge: %w", err)
	}
	// Read the result back: it validates what was written and gives the
	// summary.
	f, err := calib.Open(out)
	if err != nil {
		return fmt.Errorf("calib merge: reading back %s: %w", out, err)
	}
	defer f.Close()
	var rows int64
	for _, n := range f.Names() {
		_, s, _, _ := f.Shape(n)
		rows += int64(s)
	}
	fmt.Fprintf(c.App.Writer, "merged %d files into %s: %d layers, %d sample rows, in %.1fs\n",
		len(paths), out, len(f.Names()), rows, time.Since(start).Seconds())
	return nil
}
