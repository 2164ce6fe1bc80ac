//go:build linux

package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SetZeroOOMScore gives the restored process tree under pid the
// oom_score_adj of 0 its spec asks for. confine writes the spec's value
// into every task's image, but CRIU writes none when it is 0, so the
// tasks would keep the one CRIU had: the shim's, usually close to -1000,
// which all but exempts them from the OOM killer. For other values, and
// for specs without one, it does nothing.
func SetZeroOOMScore(spec *specs.Spec, pid uint32) error {
	if spec == nil || spec.Process == nil || spec.Process.OOMScoreAdj == nil || *spec.Process.OOMScoreAdj != 0 {
		return nil
	}
	return setOOMScoreTree("/proc", int(pid), "0")
}

// setOOMScoreTree writes value as the oom_score_adj of pid and of every
// process below it, found through proc's children files. A process that
// exits meanwhile is skipped. (Right after the restore the tree is as CRIU
// made it; a process of it that forks away and is reparented before the
// walk reaches it keeps CRIU's value.)
func setOOMScoreTree(proc string, pid int, value string) error {
	seen := map[int]bool{}
	todo := []int{pid}
	for len(todo) > 0 {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		dir := filepath.Join(proc, strconv.Itoa(p))
		if err := os.WriteFile(filepath.Join(dir, "oom_score_adj"), []byte(value), 0); err != nil {
			if p != pid && (os.IsNotExist(err) || errors.Is(err, syscall.ESRCH)) {
				continue // exited since
			}
			return fmt.Errorf("oom_score_adj of %d: %w", p, err)
		}
		tasks, _ := filepath.Glob(filepath.Join(dir, "task", "*", "children"))
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if c, err := strconv.Atoi(f); err == nil {
					todo = append(todo, c)
				}
			}
		}
	}
	return nil
}
