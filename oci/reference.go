package oci

import (
	"fmt"
	"strings"

	"oras.land/oras-go/v2/registry"
)

// ParseReference parses a checkpoint reference: REGISTRY/REPOSITORY:TAG or
// REGISTRY/REPOSITORY@DIGEST (or both). A tag or a digest is required: a
// checkpoint is never restored from an implied "latest".
func ParseReference(s string) (registry.Reference, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return registry.Reference{}, fmt.Errorf("empty checkpoint reference")
	}
	if strings.Contains(s, "://") {
		return registry.Reference{}, fmt.Errorf("checkpoint reference %q: give REGISTRY/REPOSITORY:TAG or @DIGEST, without a URL scheme", s)
	}
	ref, err := registry.ParseReference(s)
	if err != nil {
		return registry.Reference{}, fmt.Errorf("checkpoint reference %q: %w", s, err)
	}
	if ref.Reference == "" {
		return registry.Reference{}, fmt.Errorf("checkpoint reference %q: a tag or a digest is required", s)
	}
	return ref, nil
}

// Pinned reports whether ref names its manifest by digest.
func Pinned(ref registry.Reference) bool {
	return ref.ValidateReferenceAsDigest() == nil
}
