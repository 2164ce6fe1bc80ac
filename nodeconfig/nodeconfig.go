// Package nodeconfig reads the node's snapboot configuration: which
// registries and repositories checkpoints may be restored from, how they are
// pulled, and where and how much of them is cached.
package nodeconfig

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// DefaultPath is where the shim and the CLI look for the configuration.
const DefaultPath = "/etc/snapboot/config.toml"

// EnvPath overrides DefaultPath.
const EnvPath = "SNAPBOOT_CONFIG"

// Config is the node configuration. The zero value of every field is
// replaced by its default in Load; an absent file gives the defaults, which
// allow no restore at all (deny by default).
type Config struct {
	// Allow lists where restores may come from: a registry host
	// ("registry.example.com:5000") allows every repository on it, a host and
	// repository prefix ("registry.example.com/team/") allows that subtree,
	// and a full repository ("registry.example.com/team/app") only that one.
	Allow []string `toml:"allow"`
	// Namespaces, when set, ties Kubernetes namespaces to repositories: a
	// pod's container restores only from what its namespace's list allows
	// (entries as in Allow), within Allow; a namespace without a list
	// restores nothing. A checkpoint holds every page of its donor's memory,
	// so on a node shared by teams this keeps one team's pods from
	// restoring another's. Containers that are not a pod's (ctr, nerdctl:
	// no CRI sandbox namespace in their spec) are bound by Allow alone.
	Namespaces map[string][]string `toml:"namespaces"`
	// RequireDigest refuses references by tag; only name@sha256:... restores.
	RequireDigest bool `toml:"require_digest"`
	// InsecureRegistries are reached over plain HTTP.
	InsecureRegistries []string `toml:"insecure_registries"`
	// DockerConfig is the docker config.json with credentials and credential
	// helpers; empty means the default (~/.docker/config.json or $DOCKER_CONFIG).
	DockerConfig string `toml:"docker_config"`

	Cache   CacheConfig   `toml:"cache"`
	Pull    PullConfig    `toml:"pull"`
	Metrics MetricsConfig `toml:"metrics"`
}

// MetricsConfig turns on the node-wide metrics file that `snapboot metrics`
// serves in Prometheus format.
type MetricsConfig struct {
	// Dir holds the metrics file; "" turns metrics off.
	Dir string `toml:"dir"`
}

// CacheConfig is the node-local checkpoint cache.
type CacheConfig struct {
	Root string `toml:"root"`
	// MaxSize bounds the cache in bytes ("20GiB" in the file); 0 is unbounded.
	MaxSize ByteSize `toml:"max_size"`
	// MaxAge evicts entries not used for this long; 0 keeps them.
	MaxAge Duration `toml:"max_age"`
}

// PullConfig bounds one pull, and says how it is done.
type PullConfig struct {
	Timeout Duration `toml:"timeout"`
	// MaxArtifactSize bounds the sum of an artifact's layers, compressed.
	MaxArtifactSize ByteSize `toml:"max_artifact_size"`
	// MaxUnpackedSize bounds what one artifact unpacks to.
	MaxUnpackedSize ByteSize `toml:"max_unpacked_size"`
	// Stream lets a restore start while the page images still download
	// (default true); false downloads and unpacks the whole checkpoint
	// first.
	Stream *bool `toml:"stream"`
}

// Streaming reports whether restores may stream their page images.
func (p PullConfig) Streaming() bool { return p.Stream == nil || *p.Stream }

// Defaults.
const (
	DefaultCacheRoot       = "/var/lib/snapboot"
	DefaultPullTimeout     = 5 * time.Minute
	DefaultMaxArtifactSize = 16 << 30
	DefaultMaxUnpackedSize = 64 << 30
)

// Path is the configuration file to read: $SNAPBOOT_CONFIG or DefaultPath.
func Path() string {
	if p := os.Getenv(EnvPath); p != "" {
		return p
	}
	return DefaultPath
}

// Default is the configuration of a node without a file.
func Default() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

// Load reads path. A missing file is not an error: it gives Default().
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Default(), nil
	}
	if err != nil {
		return Default(), fmt.Errorf("read snapboot config: %w", err)
	}
	return Parse(data)
}

// Parse decodes a configuration file's content. Unknown keys are errors, so
// that a misspelt setting is not silently ignored.
func Parse(data []byte) (*Config, error) {
	c := &Config{}
	dec := toml.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return Default(), fmt.Errorf("parse snapboot config: %w", err)
	}
	// A [namespaces] table with no entries (all commented out) still
	// means the table is set, and allows no namespace: the decoder leaves
	// the map nil for it, so look for the key itself.
	if c.Namespaces == nil {
		var keys map[string]any
		if err := toml.Unmarshal(data, &keys); err == nil {
			if _, ok := keys["namespaces"]; ok {
				c.Namespaces = map[string][]string{}
			}
		}
	}
	if err := c.validate(); err != nil {
		return Default(), err
	}
	c.applyDefaults()
	return c, nil
}

func (c *Config) applyDefaults() {
	if c.Cache.Root == "" {
		c.Cache.Root = DefaultCacheRoot
	}
	if c.Pull.Timeout == 0 {
		c.Pull.Timeout = Duration(DefaultPullTimeout)
	}
	if c.Pull.MaxArtifactSize == 0 {
		c.Pull.MaxArtifactSize = DefaultMaxArtifactSize
	}
	if c.Pull.MaxUnpackedSize == 0 {
		c.Pull.MaxUnpackedSize = DefaultMaxUnpackedSize
	}
}

func (c *Config) validate() error {
	for _, a := range c.Allow {
		if !validAllowEntry(a) {
			return fmt.Errorf("snapboot config: allow entry %q: want host[:port][/repository[/]]", a)
		}
	}
	for ns, list := range c.Namespaces {
		if ns == "" {
			return errors.New("snapboot config: namespaces: an empty namespace name")
		}
		for _, a := range list {
			if !validAllowEntry(a) {
				return fmt.Errorf("snapboot config: namespaces.%s entry %q: want host[:port][/repository[/]]", ns, a)
			}
		}
	}
	for _, h := range c.InsecureRegistries {
		if h == "" || strings.ContainsAny(h, "/ \t") {
			return fmt.Errorf("snapboot config: insecure_registries entry %q: want host[:port]", h)
		}
	}
	if c.Cache.Root != "" && !strings.HasPrefix(c.Cache.Root, "/") {
		return fmt.Errorf("snapboot config: cache.root %q must be an absolute path", c.Cache.Root)
	}
	if c.Metrics.Dir != "" && !strings.HasPrefix(c.Metrics.Dir, "/") {
		return fmt.Errorf("snapboot config: metrics.dir %q must be an absolute path", c.Metrics.Dir)
	}
	if c.Pull.Timeout < 0 || c.Cache.MaxAge < 0 {
		return errors.New("snapboot config: durations must not be negative")
	}
	return nil
}

func validAllowEntry(a string) bool {
	return a != "" && !strings.ContainsAny(a, " \t@") && !strings.Contains(a, "://")
}

// Allowed reports whether a checkpoint in repository repo ("host[:port]/path")
// may be restored on this node.
func (c *Config) Allowed(registry, repository string) bool {
	return matches(c.Allow, registry, repository)
}

// AllowedInNamespace reports whether a pod of Kubernetes namespace ns may
// restore from the repository, as far as Namespaces goes (Allowed must
// hold too); true when Namespaces is not set.
func (c *Config) AllowedInNamespace(ns, registry, repository string) bool {
	if c.Namespaces == nil {
		return true // no [namespaces] table; an empty one allows none
	}
	return matches(c.Namespaces[ns], registry, repository)
}

// matches reports whether an entry of list (see Config.Allow) covers the
// repository.
func matches(list []string, registry, repository string) bool {
	full := registry + "/" + repository
	for _, a := range list {
		switch {
		case a == registry:
			return true
		case strings.HasSuffix(a, "/") && strings.HasPrefix(full+"/", a):
			return true
		case a == full:
			return true
		}
	}
	return false
}

// Insecure reports whether registry is to be reached over plain HTTP.
func (c *Config) Insecure(registry string) bool {
	for _, h := range c.InsecureRegistries {
		if h == registry {
			return true
		}
	}
	return false
}
