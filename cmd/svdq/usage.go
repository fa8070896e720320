package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// prepare readies a registered command and its subcommands (name is the
// full command name, "calib merge"):
//
//   - a usage error (an unknown flag, a bad value) is one line naming the
//     command and pointing to its --help, not the help itself;
//   - required flags are checked by the action, not by urfave/cli, which
//     prints the whole help before its error: a missing one gives one
//     line, "quantize: --model is required (svdq quantize --help lists
//     every flag)". Their help says "(required)";
//   - before the action runs, the files the command reads and writes are
//     checked (files.go).
func prepare(c *cli.Command, name string) {
	for _, sub := range c.Subcommands {
		prepare(sub, name+" "+sub.Name)
	}
	help := fmt.Sprintf("svdq %s --help lists every flag", name)
	c.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return fmt.Errorf("%s: %v (%s)", name, err, help)
	}
	if c.Action == nil {
		return
	}
	required := takeRequired(c.Flags)
	action := c.Action
	c.Action = func(ctx *cli.Context) error {
		var missing []string
		for _, f := range required {
			if !ctx.IsSet(f) {
				missing = append(missing, "--"+f)
			}
		}
		switch len(missing) {
		case 0:
		case 1:
			return fmt.Errorf("%s: %s is required (%s)", name, missing[0], help)
		default:
			return fmt.Errorf("%s: %s and %s are required (%s)", name,
				strings.Join(missing[:len(missing)-1], ", "), missing[len(missing)-1], help)
		}
		if err := checkFiles(name, ctx); err != nil {
			return err
		}
		return action(ctx)
	}
}

// takeRequired clears the Required mark of flags, appends "(required)" to
// their usage and returns their names. It panics on a required flag of a
// type it does not know (a programmer error, met at start-up).
func takeRequired(flags []cli.Flag) []string {
	var names []string
	for _, f := range flags {
		rf, ok := f.(cli.RequiredFlag)
		if !ok || !rf.IsRequired() {
			continue
		}
		switch f := f.(type) {
		case *cli.StringFlag:
			f.Required, f.Usage = false, f.Usage+" (required)"
		case *cli.StringSliceFlag:
			f.Required, f.Usage = false, f.Usage+" (required)"
		case *cli.IntFlag:
			f.Required, f.Usage = false, f.Usage+" (required)"
		case *cli.Float64Flag:
			f.Required, f.Usage = false, f.Usage+" (required)"
		default:
			panic(fmt.Sprintf("svdq: required flag %s of type %T not handled", f.Names()[0], f))
		}
		names = append(names, f.Names()[0])
	}
	return names
}
