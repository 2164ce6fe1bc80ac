//go:build linux

package confine

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// netSysctlOf returns the value of a network sysctl (dotted name, under
// net.) in the network namespace at path, or in the calling process's
// when path is "" (this node's, for a shim).
func netSysctlOf(path, name string) (string, error) {
	if !strings.HasPrefix(name, "net.") || strings.Contains(name, "/") || strings.Contains(name, "..") {
		return "", fmt.Errorf("not a network sysctl: %q", name)
	}
	var value string
	read := func() error {
		data, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
		value = strings.TrimSpace(string(data))
		return err
	}
	if path == "" {
		err := read()
		return value, err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer f.Close()
	if err := restorehook.InNamespace(f, unix.CLONE_NEWNET, read); err != nil {
		return "", fmt.Errorf("network namespace %s: %w", path, err)
	}
	return value, nil
}
