#!/usr/bin/env bash
# fuzz.sh runs every Fuzz* target of the module for a while each (not part
# of `go test ./...`, which runs only the seed corpora) and prints, per
# target, the executions go test reported and whether a crasher was found.
#
# Usage: scripts/fuzz.sh [FUZZTIME] [PATTERN]
#   FUZZTIME  -fuzztime of each target (default 30s)
#   PATTERN   only targets whose "package FuzzName" matches this grep -E
#             pattern (default: all)
# Environment: FUZZ_LOG_DIR keeps each target's go test output there
# (default: a temporary directory, removed at exit).
#
# A crasher is an input go test wrote to PKG/testdata/fuzz/FuzzName/ during
# the run: keep it (it becomes a seed every `go test` runs) and fix the bug.
# A failure with no new input is not a crasher: go1.26's fuzz coordinator
# can end a run at the -fuzztime boundary with "context deadline exceeded"
# (golang/go#75804, fixed in go1.27); it is reported as "deadline" and does
# not fail the script. Exit status 1 when any target found a crasher or
# failed otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-30s}
pattern=${2:-.}
logdir=${FUZZ_LOG_DIR:-}
if [ -z "$logdir" ]; then
  logdir=$(mktemp -d)
  trap 'rm -rf "$logdir"' EXIT
fi
mkdir -p "$logdir"
export CGO_ENABLED=${CGO_ENABLED:-0}

# Every "package-dir FuzzName" of the module's test files, sorted.
targets=$(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . |
  sed -E 's#^\./(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#' |
  LC_ALL=C sort -u | grep -E -- "$pattern")
if [ -z "$targets" ]; then
  echo "fuzz.sh: no Fuzz target matches $pattern" >&2
  exit 2
fi

echo "fuzz.sh: $(go version | cut -d' ' -f3-), $(nproc) CPUs, -fuzztime $fuzztime per target"
printf '%-28s %-22s %12s %10s  %s\n' package target execs execs/s result
status=0
while read -r dir name; do
  corpus=$dir/testdata/fuzz/$name
  before=$(ls "$corpus" 2>/dev/null | LC_ALL=C sort)
  log=$logdir/$(echo "$dir" | tr / _)_$name.log
  start=$SECONDS
  go test "./$dir" -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" >"$log" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
  execs=${execs:-0}
  # The rate over the fuzzing itself: the last progress line's elapsed time.
  elapsed=$(grep -oE '^fuzz: elapsed: [0-9hms.]+, execs' "$log" | tail -1 | sed -E 's/fuzz: elapsed: (.*), execs/\1/')
  rate=$(awk -v e="$execs" -v t="$elapsed" 'BEGIN {
    s = 0; n = t
    if (match(n, /[0-9]+h/)) { s += 3600 * substr(n, RSTART, RLENGTH - 1) }
    if (match(n, /[0-9]+m/)) { s += 60 * substr(n, RSTART, RLENGTH - 1) }
    if (match(n, /[0-9.]+s/)) { s += substr(n, RSTART, RLENGTH - 1) }
    if (s > 0) printf "%d", e / s; else printf "-" }')
  after=$(ls "$corpus" 2>/dev/null | LC_ALL=C sort)
  new=$(comm -13 <(echo "$before") <(echo "$after") | grep -v '^$')
  bad=1
  if [ -n "$new" ]; then
    result="CRASHER: $(echo "$new" | sed "s#^#$corpus/#" | tr '\n' ' ')"
  elif [ $rc -eq 0 ]; then
    result="ok, no crasher" bad=0
  elif grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
    result="ok, no crasher (deadline race at the end: golang/go#75804)" bad=0
  else
    result="FAILED (exit $rc, no input written)"
  fi
  printf '%-28s %-22s %12s %10s  %s, %ds\n' "$dir" "$name" "$execs" "$rate" "$result" "$secs"
  if [ $bad -ne 0 ]; then
    status=1
    grep -v '^fuzz: elapsed' "$log" | tail -20 | sed 's/^/    /'
  fi
done <<<"$targets"
exit $status
