//go:build linux

package compat

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestMemoizedCRIUVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "memo")
	calls, version := 0, 40201
	var detectErr error
	detect := func() (int, error) {
		calls++
		return version, detectErr
	}
	get := MemoizedCRIUVersion(dir, bin, detect)
	check := func(step string, wantVersion, wantCalls int) {
		t.Helper()
		v, err := get()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if v != wantVersion || calls != wantCalls {
			t.Fatalf("%s: version %d after %d detections, want %d after %d", step, v, calls, wantVersion, wantCalls)
		}
	}

	check("first", 40201, 1)
	check("memoized", 40201, 1)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("memo directory: %v, %v", fi, err)
	}

	// An upgrade rewrites the binary: detected again.
	version = 40300
	later := time.Now().Add(time.Minute)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n# 4.3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	check("binary changed", 40300, 2)
	check("memoized again", 40300, 2)

	// A damaged memo is not believed.
	memos, _ := filepath.Glob(filepath.Join(dir, "criu-*.json"))
	if len(memos) != 1 {
		t.Fatalf("memo files: %v", memos)
	}
	if err := os.WriteFile(memos[0], []byte(`{"version": 99`), 0o600); err != nil {
		t.Fatal(err)
	}
	check("damaged memo", 40300, 3)

	// A failed detection is returned, not remembered.
	if err := os.Remove(memos[0]); err != nil {
		t.Fatal(err)
	}
	detectErr = errors.New("criu broke")
	if _, err := get(); !errors.Is(err, detectErr) {
		t.Fatalf("detection error: got %v", err)
	}
	if _, err := os.Stat(memos[0]); !os.IsNotExist(err) {
		t.Fatalf("a failed detection left a memo: %v", err)
	}
	detectErr = nil
	check("after the failure", 40300, 5)

	// A memo directory that can't be made costs a detection each time,
	// nothing else.
	blocked := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocked, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	get = MemoizedCRIUVersion(filepath.Join(blocked, "memo"), bin, detect)
	check("unwritable, first", 40300, 6)
	check("unwritable, second", 40300, 7)

	// No such binary: the memo is not consulted, detection decides (the
	// fake detect answers; a real one would fail as running CRIU would).
	get = MemoizedCRIUVersion(dir, filepath.Join(t.TempDir(), "missing"), detect)
	check("missing binary", 40300, 8)
}
