package shim

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// criuErrors returns the last error lines of CRIU's restore log in a bundle
// (runc's work directory is <bundle>/work), so that a fallback's reason
// says why CRIU failed and not only that it did.
func criuErrors(bundle string) string {
	f, err := os.Open(filepath.Join(bundle, "work", "restore.log"))
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
