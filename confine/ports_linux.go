//go:build linux

package confine

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// portStartOf returns net.ipv4.ip_unprivileged_port_start in the network
// namespace at path, or in the calling process's when path is "" (this
// node's, for a shim).
func portStartOf(path string) (uint32, error) {
	var start uint32
	read := func() error {
		data, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
		if err != nil {
			return err
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 32)
		start = uint32(v)
		return err
	}
	if path == "" {
		return start, read()
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer f.Close()
	if err := restorehook.InNamespace(f, unix.CLONE_NEWNET, read); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return start, nil
}
