//go:build linux

package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/restore"
)

// A checkpoint's strings are shown escaped where they hold characters that
// are not printable: a terminal control sequence in its metadata is not
// sent to the terminal, nor does a line break make a row of its own.
func TestInspectionShowsNoControlCharacters(t *testing.T) {
	in := &restore.Inspection{
		Ref:        "reg.test/apps/web:v1",
		Checkpoint: &oci.Checkpoint{},
		Metadata: &oci.Metadata{FormatVersion: 1, CRIU: oci.Version{Version: "4.2.1"},
			Host:   oci.Host{Architecture: "amd64", Kernel: "6.18\x1b]0;pwned\x07", CPU: oci.CPU{Model: "Xeon\x1b[2J"}},
			Source: oci.Source{Image: "docker.io/library/app\nrestorable here\tyes", Container: "web"}},
		Compatible: errors.New("kernel 6.18\x1b[31m is newer"),
	}
	var out bytes.Buffer
	printInspection(&out, in)
	got := out.String()
	if strings.ContainsAny(got, "\x1b\x07") {
		t.Fatalf("control characters printed:\n%q", got)
	}
	if strings.Count(got, "\nrestorable here") != 1 {
		t.Fatalf("a metadata string made a row of its own:\n%s", got)
	}
	for _, want := range []string{`"6.18\x1b]0;pwned\a"`, `"Xeon\x1b[2J"`, "source image         \"docker.io/library/app\\nrestorable here\\tyes\""} {
		if !strings.Contains(got, want) {
			t.Errorf("%q not shown:\n%s", want, got)
		}
	}
}

// A refusal printed as an error escapes the checkpoint's control
// characters it quotes, and keeps its own line breaks.
func TestErrorsEscapeControlCharacters(t *testing.T) {
	got := escapeControls("checkpoint from kernel 6.18\x1b[2J\x07, CRIU 4.2\nsecond line\tend")
	if strings.ContainsAny(got, "\x1b\x07") || got != `checkpoint from kernel 6.18\x1b[2J\a, CRIU 4.2`+"\nsecond line\tend" {
		t.Fatalf("%q", got)
	}
}
