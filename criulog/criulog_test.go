package criulog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "restore.log")
	if Errors(path) != "" {
		t.Fatal("no log should give no detail")
	}
	log := "(00.01) 1: Restoring\n(00.02) 1: Error (criu/files-reg.c:2204): Can't open file tmp/app.log on restore: No such file or directory\n(00.03) Error (criu/cr-restore.c:2600): Restoring FAILED.\n"
	os.WriteFile(path, []byte(log), 0o600)
	want := "Error (criu/files-reg.c:2204): Can't open file tmp/app.log on restore: No such file or directory | Error (criu/cr-restore.c:2600): Restoring FAILED."
	if got := Errors(path); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	os.WriteFile(path, []byte(strings.Repeat("Error (a): x\n", 5)+"Error (b): last\n"), 0o600)
	if got := Errors(path); strings.Count(got, "Error (") != 3 || !strings.HasSuffix(got, "Error (b): last") {
		t.Fatalf("want the last three errors, got %q", got)
	}
}
