package shim

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCRIUErrors(t *testing.T) {
	b := t.TempDir()
	if criuErrors(b) != "" {
		t.Fatal("no log should give no detail")
	}
	os.Mkdir(filepath.Join(b, "work"), 0o700)
	log := "(00.01) 1: Restoring\n(00.02) 1: Error (criu/files-reg.c:2204): Can't open file tmp/app.log on restore: No such file or directory\n(00.03) Error (criu/cr-restore.c:2600): Restoring FAILED.\n"
	os.WriteFile(filepath.Join(b, "work", "restore.log"), []byte(log), 0o600)
	want := "Error (criu/files-reg.c:2204): Can't open file tmp/app.log on restore: No such file or directory | Error (criu/cr-restore.c:2600): Restoring FAILED."
	if got := criuErrors(b); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}
