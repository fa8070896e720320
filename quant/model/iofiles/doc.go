// Package iofiles guards the files one command reads and writes, before it
// does any work. A command declares its inputs (Set.Input) and every path
// it will write (Set.Output: outputs, reports, plots, sidecars); Check then
// refuses, with an error naming the flag and both paths:
//
//   - an output that is the same file as an input (os.SameFile, so
//     symbolic and hard links count; a sharded checkpoint or a diffusers
//     folder counts as every file it reads, see
//     safetensors.CheckpointFiles);
//   - two outputs that are the same file (the same path once symbolic links
//     in the directory are resolved, or one file through a hard link);
//   - an output that exists and is not a regular file (a directory; a
//     device or a pipe is accepted only for an output written in place,
//     Set.OutputStream: `--report /dev/stdout`);
//   - an output whose directory does not exist (unless declared with
//     Set.OutputMkdir: the nearest existing ancestor is checked instead),
//     or in which no file can be created: a probe file, named as the
//     safetensors writer names its temporary files, is created and removed,
//     so a read-only directory fails at once rather than after the run.
//
// Stale lists the temporary files (safetensors .NAME.tmp-PID-DIGITS) that
// earlier runs left in the output directories. They are only reported,
// never deleted: a file of a process still running (another svdq writing
// into the same directory, possibly on another machine sharing the
// directory) cannot be told apart from one whose process was killed with
// SIGKILL, so deleting is left to the user, whom the warning tells which
// process made the file and whether a process of that number still runs
// on this machine.
package iofiles
