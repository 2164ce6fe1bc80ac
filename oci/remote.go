package oci

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"

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
	config, err := dockerConfigPath(opts.DockerConfig, os.Getenv, currentUserHome)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	store, err := credentials.NewStore(config, credentials.StoreOptions{})
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

// dockerConfigPath is the docker config.json NewRepository reads: the node's
// own setting, else docker's default ($DOCKER_CONFIG/config.json, else
// ~/.docker/config.json). A shim inherits containerd's environment, and
// containerd's systemd unit sets no $HOME (systemd sets it only for units
// with User=), so without $HOME the home directory is the running user's
// from the password database, as docker's own CLI falls back to: root's,
// where `oras login` run as root on the node writes.
func dockerConfigPath(configured string, getenv func(string) string, userHome func() (string, error)) (string, error) {
	if configured != "" {
		return configured, nil
	}
	if dir := getenv("DOCKER_CONFIG"); dir != "" {
		return filepath.Join(dir, "config.json"), nil
	}
	home := getenv("HOME")
	if home == "" {
		var err error
		if home, err = userHome(); err != nil {
			return "", fmt.Errorf("no $HOME, $DOCKER_CONFIG or docker_config, and no home directory: %w", err)
		}
	}
	return filepath.Join(home, ".docker", "config.json"), nil
}

func currentUserHome() (string, error) {
	u, err := user.Current()
	if err != nil {
		return "", err
	}
	if u.HomeDir == "" {
		return "", fmt.Errorf("user %s has no home directory", u.Username)
	}
	return u.HomeDir, nil
}
