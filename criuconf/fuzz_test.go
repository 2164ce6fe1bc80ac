package criuconf

import (
	"strings"
	"testing"
)

func FuzzParseUserOptions(f *testing.F) {
	f.Add("tcp-established,ext-unix-sk")
	f.Add("ghost-limit=1048576, skip-in-flight")
	f.Add("action-script=/bin/sh")
	f.Fuzz(func(t *testing.T, s string) {
		opts, err := ParseUserOptions(s)
		if err != nil {
			return
		}
		for _, o := range opts {
			if _, ok := allowed[o.Name]; !ok {
				t.Fatalf("accepted option %q outside the allowlist", o.Name)
			}
			if strings.ContainsAny(o.Value, "\n\r") || strings.ContainsAny(o.Name, "\n\r =") {
				t.Fatalf("option %q=%q could inject a config line", o.Name, o.Value)
			}
		}
		for _, line := range strings.Split(strings.TrimSpace(string(Render("restore", RestoreOptions(opts)))), "\n")[1:] {
			name, _, _ := strings.Cut(line, " ")
			if _, ok := allowed[name]; !ok && name != "network-lock" {
				t.Fatalf("rendered line %q is not an allowed option", line)
			}
		}
	})
}
