//go:build linux

package compat

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/containerd/continuity"
)

// criuBinary identifies one CRIU binary file: a package upgrade or any
// rewrite gives it another inode, size, mtime or ctime.
type criuBinary struct {
	Path  string `json:"path"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

type criuMemo struct {
	Binary  criuBinary `json:"binary"`
	Version int        `json:"version"`
}

// MemoizedCRIUVersion returns detect, remembered in dir for the CRIU binary
// that name resolves to on PATH (or name itself, if it is a path): while
// that file is unchanged, its version is read from dir instead of running
// CRIU. Every shim describes its node when it starts, restore or not, and
// `criu --version` is a fork and exec that costs several milliseconds of
// CPU beside the shim's own start. Nothing about the memo can make a
// version wrong for long: a changed binary is detected again, and when dir
// can't be read or written, detect runs as if there were no memo.
func MemoizedCRIUVersion(dir, name string, detect CRIUVersionFunc) CRIUVersionFunc {
	return func() (int, error) {
		bin, err := identify(name)
		if err != nil {
			return detect()
		}
		sum := sha256.Sum256([]byte(bin.Path))
		file := filepath.Join(dir, "criu-"+hex.EncodeToString(sum[:8])+".json")
		if data, err := os.ReadFile(file); err == nil {
			var m criuMemo
			if json.Unmarshal(data, &m) == nil && m.Binary == bin && m.Version > 0 {
				return m.Version, nil
			}
		}
		v, err := detect()
		if err != nil {
			return 0, err
		}
		if again, err := identify(name); err == nil && again == bin {
			// Best effort: the version is right either way.
			_ = writeMemo(dir, file, criuMemo{Binary: bin, Version: v})
		}
		return v, nil
	}
}

func identify(name string) (criuBinary, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return criuBinary{}, err
	}
	if path, err = filepath.Abs(path); err != nil {
		return criuBinary{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return criuBinary{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return criuBinary{}, fmt.Errorf("%s: not a regular file", path)
	}
	return criuBinary{Path: path, Dev: st.Dev, Ino: st.Ino, Size: st.Size,
		Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}, nil
}

// writeMemo writes the memo whole or not at all, so that concurrent shims
// never read half of one.
func writeMemo(dir, file string, m criuMemo) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return continuity.AtomicWriteFile(file, data, 0o600)
}
