//go:build linux

package confine

import (
	"fmt"
	"os"

	"github.com/snapboot/snapboot/restorehook"
)

// utsNamesOf returns the host name and domain name of the UTS namespace at
// path, or of the calling process's when path is "" (this node's, for a
// shim).
func utsNamesOf(path string) (host, domain string, err error) {
	if path == "" {
		return restorehook.UTSNames(nil)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	defer f.Close()
	if host, domain, err = restorehook.UTSNames(f); err != nil {
		return "", "", fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	return host, domain, nil
}
