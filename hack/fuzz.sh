#!/usr/bin/env bash
# Runs one fuzz target for a while: hack/fuzz.sh GO PKG NAME FUZZTIME
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" when -fuzztime ends while a worker is mid-input
# (golang/go#75804, fixed in Go 1.27). That is not a finding: a real one
# prints "Failing input written to" (or a panic, or a test error) and
# leaves a reproducer in testdata/fuzz/. Such a bare failure is run once
# more; any other failure, or the same one twice, fails.
set -uo pipefail
go=$1 pkg=$2 name=$3 fuzztime=$4
for attempt in 1 2; do
	out=$(mktemp)
	"$go" test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	if [ "$rc" -eq 0 ]; then
		rm -f "$out"
		exit 0
	fi
	if [ "$attempt" -eq 1 ] && grep -q 'context deadline exceeded' "$out" &&
		! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$out"; then
		echo "fuzz $pkg $name: the Go fuzz coordinator's deadline race (golang/go#75804), not a finding; running it again"
		rm -f "$out"
		continue
	fi
	rm -f "$out"
	exit "$rc"
done
