// Command svdq makes SVDQuant 4-bit checkpoints that nunchaku loads, folds
// LoRAs into them and measures their accuracy. Run `svdq --help`.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/urfave/cli/v2"
)

// Exit statuses scripts can rely on. A run stopped by a signal removes
// its unfinished output files and then dies of that signal (the shell sees
// 128 + its number: 130 for SIGINT); see signals.go.
const (
	exitOK       = 0
	exitMismatch = 1 // a check ran and failed its threshold
	exitBadInput = 2 // bad arguments or input files; nothing was written
)

// commands holds every subcommand; each file adds its own in init through
// register, so that commands live beside the code that builds them.
var commands []*cli.Command

// register adds a command (see prepare).
func register(c *cli.Command) {
	prepare(c, c.Name)
	commands = append(commands, c)
}

// version is the tool version recorded in output metadata.
const version = "0.1.0"

func main() {
	sigs := catch(os.Stderr)
	app := newApp()
	app.ErrWriter = sigs.quiet(app.ErrWriter)
	code := run(app, os.Args)
	sigs.stop()
	os.Exit(code)
}

// newApp builds the CLI with every registered command; output goes to
// app.Writer and app.ErrWriter (os.Stdout and os.Stderr by default), so
// tests can capture it.
func newApp() *cli.App {
	sort.Slice(commands, func(i, j int) bool { return commands[i].Name < commands[j].Name })
	return &cli.App{
		Name:    "svdq",
		Usage:   "make SVDQuant 4-bit checkpoints for nunchaku, fuse LoRAs, measure accuracy",
		Version: version,
		Description: "svdq quantizes 16-bit diffusion transformers (.safetensors) to SVDQuant W4A4\n" +
			"(INT4 or NVFP4 with a 16-bit low-rank branch) on the CPU.\n" +
			"Start with `svdq demo`. Exit status: 0 ok, 1 a check failed, 2 bad input; a run stopped by a\n" +
			"signal (SIGINT, SIGTERM, SIGHUP, ...) removes its unfinished files and dies of that signal.",
		Commands:        commands,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%v (svdq --help lists the commands and flags)", err)
		},
		Writer:    os.Stdout,
		ErrWriter: os.Stderr,
	}
}

// run executes the app and maps errors to exit statuses: a *statusError
// carries its own status; anything else is bad input (2).
func run(app *cli.App, args []string) int {
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var se *statusError
	if errors.As(err, &se) {
		if se.err != nil {
			fmt.Fprintln(app.ErrWriter, "svdq:", se.err)
		}
		return se.status
	}
	fmt.Fprintln(app.ErrWriter, "svdq:", err)
	return exitBadInput
}

// statusError is an error with an explicit exit status.
type statusError struct {
	status int
	err    error
}

func (e *statusError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.status)
	}
	return e.err.Error()
}

func (e *statusError) Unwrap() error { return e.err }

// failed returns an error that makes svdq exit with status 1 (a check that
// ran and did not pass); err may be nil when the report was already printed.
func failed(err error) error { return &statusError{status: exitMismatch, err: err} }
