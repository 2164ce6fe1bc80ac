// Package criuconf generates the CRIU configuration files that runc reads
// through the org.criu.config annotation: one for dumping a warm container,
// one for restoring it as a clone, each with the options a user may add per
// container from a documented allowlist.
package criuconf

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// RuncAnnotation is the spec annotation runc reads the config file's path from.
const RuncAnnotation = "org.criu.config"

// FileName is the name of the generated file in a container's bundle.
const FileName = "snapboot-criu.conf"

// Option is one CRIU long option without its dashes, with an optional value.
type Option struct {
	Name  string
	Value string
}

func (o Option) String() string {
	if o.Value == "" {
		return o.Name
	}
	return o.Name + " " + o.Value
}

// Restore defaults: start a clone of a warm server. Connections that were
// established in the donor come back closed, so the clone never shares a TCP
// connection with the donor (the app's reconnect logic takes over); listening
// sockets come back listening. Network locking uses nftables, which Debian's
// CRIU is built with (no iptables binary is needed).
var restoreDefaults = []Option{
	{Name: "tcp-close"},
	{Name: "file-locks"},
	{Name: "network-lock", Value: "nftables"},
}

// Dump defaults: tcp-established is required to dump a process holding an
// open connection (a database connection, say); without it CRIU refuses.
var dumpDefaults = []Option{
	{Name: "tcp-established"},
	{Name: "file-locks"},
	{Name: "network-lock", Value: "nftables"},
}

// allowed is the allowlist of options a user may set per container, with the
// kind of value each takes. Everything else is refused: options that run
// programs, name host paths or change what is restored where are never
// taken from an annotation.
var allowed = map[string]valueKind{
	"tcp-established": noValue,   // keep established connections (migration, donor gone)
	"tcp-close":       noValue,   // restore established connections closed (the default)
	"file-locks":      noValue,   // dump and restore file locks (a default)
	"ext-unix-sk":     noValue,   // allow external unix sockets
	"skip-in-flight":  noValue,   // drop half-open incoming connections
	"link-remap":      noValue,   // allow linked-remap of deleted files
	"ghost-limit":     sizeValue, // largest deleted-but-open file to carry, bytes
}

type valueKind int

const (
	noValue valueKind = iota
	sizeValue
)

// Allowlist returns the options a user may set, sorted, for documentation
// and error messages.
func Allowlist() []string {
	names := make([]string, 0, len(allowed))
	for n := range allowed {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ParseUserOptions parses the value of the snapboot.dev/criu-options
// annotation: comma-separated option names, "ghost-limit=SIZE" for the one
// that takes a value. An option outside the allowlist is an error.
func ParseUserOptions(s string) ([]Option, error) {
	var opts []Option
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		name, value, hasValue := strings.Cut(f, "=")
		name = strings.TrimPrefix(strings.TrimSpace(name), "--")
		value = strings.TrimSpace(value)
		kind, ok := allowed[name]
		if !ok {
			return nil, fmt.Errorf("CRIU option %q is not allowed; allowed: %s", name, strings.Join(Allowlist(), ", "))
		}
		switch kind {
		case noValue:
			if hasValue {
				return nil, fmt.Errorf("CRIU option %q takes no value", name)
			}
		case sizeValue:
			if n, err := strconv.ParseUint(value, 10, 63); err != nil || n == 0 {
				return nil, fmt.Errorf("CRIU option %q wants a size in bytes, got %q", name, value)
			}
		}
		opts = append(opts, Option{Name: name, Value: value})
	}
	return opts, nil
}

// RestoreOptions are the options of a restore: the defaults merged with the
// user's. tcp-established and tcp-close exclude each other; the user's
// choice wins.
func RestoreOptions(user []Option) []Option { return merge(restoreDefaults, user) }

// DumpOptions are the options of a dump: the defaults merged with the user's.
func DumpOptions(user []Option) []Option {
	// tcp-close is a restore-time option; a dump always needs tcp-established.
	var u []Option
	for _, o := range user {
		if o.Name != "tcp-close" {
			u = append(u, o)
		}
	}
	return merge(dumpDefaults, u)
}

func merge(defaults, user []Option) []Option {
	out := slices.Clone(defaults)
	for _, o := range user {
		if o.Name == "tcp-established" {
			out = slices.DeleteFunc(out, func(x Option) bool { return x.Name == "tcp-close" })
		}
		if o.Name == "tcp-close" {
			out = slices.DeleteFunc(out, func(x Option) bool { return x.Name == "tcp-established" })
		}
		out = slices.DeleteFunc(out, func(x Option) bool { return x.Name == o.Name })
		out = append(out, o)
	}
	return out
}

// Render is the content of a CRIU config file: one option per line.
func Render(purpose string, opts []Option) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# CRIU %s options, generated by snapboot. Do not edit: it is written anew for every container.\n", purpose)
	for _, o := range opts {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// Lines are the options as they appear in the file, for the record.
func Lines(opts []Option) []string {
	l := make([]string, len(opts))
	for i, o := range opts {
		l[i] = o.String()
	}
	return l
}

// Word reports whether s can be a word of a CRIU config file as it is:
// CRIU splits a line at white space, starts a comment at '#' and a quoted
// string at '"', and reads a later word of a line that starts with "--"
// as an option of its own. Only printable ASCII without those.
func Word(s string) bool {
	if strings.Contains(s, "--") {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c > '~' || c == '#' || c == '"' || c == '\\' || c == '\'' {
			return false
		}
	}
	return true
}

// WriteFile writes the config file into dir (a bundle, or a work directory)
// and returns its absolute path, for the org.criu.config annotation. Every
// option's name and value must be a Word: nothing else can be read back
// as more options.
func WriteFile(dir, purpose string, opts []Option) (string, error) {
	for _, o := range opts {
		if !Word(o.Name) || o.Value != "" && !Word(o.Value) {
			return "", fmt.Errorf("CRIU option %q: not one word of a config file", o.String())
		}
	}
	abs, err := filepath.Abs(filepath.Join(dir, FileName))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(abs, Render(purpose, opts), 0o600); err != nil {
		return "", fmt.Errorf("write CRIU config: %w", err)
	}
	return abs, nil
}
