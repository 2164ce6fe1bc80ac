// Package criulog pulls the error lines out of a CRIU log (dump.log,
// restore.log), so that a failed dump or restore says why CRIU failed and
// not only that it did.
package criulog

import (
	"bufio"
	"os"
	"strings"
)

// Errors returns the last (at most three) error lines of the CRIU log at
// path, joined with " | ", or "" when there is no log or no error in it.
func Errors(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var errs []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "Error ("); i >= 0 {
			errs = append(errs, strings.TrimSpace(line[i:]))
			if len(errs) > 3 {
				errs = errs[1:]
			}
		}
	}
	return strings.Join(errs, " | ")
}
