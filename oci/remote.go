package oci

import (
	"fmt"

	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// RemoteOptions says how to reach registries.
type RemoteOptions struct {
	// PlainHTTP is true for registries the node marks insecure.
	PlainHTTP bool
	// DockerConfig is the docker config.json to read credentials and
	// credential helpers from; "" is docker's default location.
	DockerConfig string
	// UserAgent identifies the caller ("snapboot-shim", "snapboot").
	UserAgent string
}

// NewRepository returns the repository that holds ref, with credentials from
// the docker config (and its credential helpers) and oras-go's retry policy.
func NewRepository(ref registry.Reference, opts RemoteOptions) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repository)
	if err != nil {
		return nil, fmt.Errorf("repository %s/%s: %w", ref.Registry, ref.Repository, err)
	}
	repo.PlainHTTP = opts.PlainHTTP
	var store credentials.Store
	if opts.DockerConfig != "" {
		store, err = credentials.NewStore(opts.DockerConfig, credentials.StoreOptions{})
	} else {
		store, err = credentials.NewStoreFromDocker(credentials.StoreOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	ua := opts.UserAgent
	if ua == "" {
		ua = "snapboot"
	}
	repo.Client = &auth.Client{
		Client:     retry.DefaultClient,
		Cache:      auth.NewCache(),
		Credential: credentials.Credential(store),
		Header:     map[string][]string{"User-Agent": {ua}},
	}
	return repo, nil
}
