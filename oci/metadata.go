package oci

import (
	"fmt"
	"strings"
	"time"
)

// FormatVersion is the version of the artifact format this code writes and reads.
const FormatVersion = 1

// Metadata is the config blob of a checkpoint: what a node needs to know to
// decide whether it can restore it. It never holds environment variables or
// anything else from the container's spec: those can hold secrets, and the
// restoring node takes the spec from its own caller.
type Metadata struct {
	FormatVersion int       `json:"formatVersion"`
	Created       time.Time `json:"created,omitzero"`
	CRIU          Version   `json:"criu"`
	Runc          Version   `json:"runc,omitzero"`
	Host          Host      `json:"host"`
	Source        Source    `json:"source,omitzero"`
	// DumpOptions are the CRIU options the dump used (the lines of its
	// CRIU config file), for the record.
	DumpOptions []string `json:"dumpOptions,omitempty"`
}

// Version of a tool, as it reported it ("4.2.1").
type Version struct {
	Version string `json:"version"`
}

// Host describes the machine the checkpoint was taken on.
type Host struct {
	Architecture string `json:"architecture"` // GOARCH spelling: amd64, arm64
	OS           string `json:"os,omitempty"`
	Kernel       string `json:"kernel,omitempty"`
	CPU          CPU    `json:"cpu,omitzero"`
}

// CPU is the donor's processor. A restore on a CPU that lacks one of Flags
// could crash the app with SIGILL, so such nodes refuse it.
type CPU struct {
	Vendor string   `json:"vendor,omitempty"`
	Model  string   `json:"model,omitempty"`
	Flags  []string `json:"flags,omitempty"`
}

// Source is where the checkpointed container came from.
type Source struct {
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"imageDigest,omitempty"`
	Container   string `json:"container,omitempty"`
}

// DecodeMetadata parses and validates a config blob.
func DecodeMetadata(data []byte) (*Metadata, error) {
	if len(data) > MaxConfigSize {
		return nil, invalid("config is %d bytes, more than %d", len(data), MaxConfigSize)
	}
	var m Metadata
	if err := strictJSON(data, &m); err != nil {
		return nil, invalid("config is not valid JSON: %v", err)
	}
	if m.FormatVersion != FormatVersion {
		return nil, invalid("formatVersion %d, this snapboot reads %d", m.FormatVersion, FormatVersion)
	}
	if m.Host.Architecture == "" {
		return nil, invalid("config has no host.architecture")
	}
	if m.CRIU.Version == "" {
		return nil, invalid("config has no criu.version")
	}
	if _, err := ParseVersion(m.CRIU.Version); err != nil {
		return nil, invalid("criu.version: %v", err)
	}
	return &m, nil
}

// ParseVersion turns "4.2.1" (or "4.2") into a comparable number, 40201.
func ParseVersion(v string) (int, error) {
	parts := strings.SplitN(strings.TrimPrefix(strings.TrimSpace(v), "v"), ".", 3)
	if len(parts) < 2 {
		return 0, fmt.Errorf("version %q: want MAJOR.MINOR[.PATCH]", v)
	}
	n := 0
	for i := 0; i < 3; i++ {
		x := 0
		if i < len(parts) {
			p := parts[i]
			if j := strings.IndexFunc(p, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
				p = p[:j]
			}
			if p == "" {
				return 0, fmt.Errorf("version %q: want MAJOR.MINOR[.PATCH]", v)
			}
			if _, err := fmt.Sscanf(p, "%d", &x); err != nil || x > 99 {
				return 0, fmt.Errorf("version %q: bad number %q", v, parts[i])
			}
		}
		n = n*100 + x
	}
	return n, nil
}
