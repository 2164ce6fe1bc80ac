package oci

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"oras.land/oras-go/v2/registry"
)

// The docker config a shim reads, in docker's order, and the home directory
// of the user it runs as when containerd's environment has no $HOME, as
// under containerd's systemd unit.
func TestDockerConfigPath(t *testing.T) {
	home := func() (string, error) { return "/home/of/user", nil }
	noHome := func() (string, error) { return "", errors.New("no passwd entry") }
	for _, tc := range []struct {
		name       string
		configured string
		env        map[string]string
		userHome   func() (string, error)
		want       string
		wantErr    bool
	}{
		{name: "node setting wins", configured: "/etc/snapboot/auth.json", env: map[string]string{"DOCKER_CONFIG": "/d", "HOME": "/h"}, userHome: home, want: "/etc/snapboot/auth.json"},
		{name: "DOCKER_CONFIG", env: map[string]string{"DOCKER_CONFIG": "/d", "HOME": "/h"}, userHome: home, want: "/d/config.json"},
		{name: "HOME", env: map[string]string{"HOME": "/h"}, userHome: home, want: "/h/.docker/config.json"},
		{name: "no HOME", env: map[string]string{}, userHome: home, want: "/home/of/user/.docker/config.json"},
		{name: "no HOME and no user", env: map[string]string{}, userHome: noHome, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dockerConfigPath(tc.configured, func(k string) string { return tc.env[k] }, tc.userHome)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %q, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A shim started by a containerd with no $HOME in its environment reaches
// registries: oras-go's default store alone fails there.
func TestNewRepositoryWithoutHome(t *testing.T) {
	t.Setenv("HOME", "")
	os.Unsetenv("HOME")
	t.Setenv("DOCKER_CONFIG", "")
	os.Unsetenv("DOCKER_CONFIG")
	ref, err := registry.ParseReference("127.0.0.1:5000/app/checkpoint:v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewRepository(ref, RemoteOptions{PlainHTTP: true}); err != nil {
		t.Fatalf("NewRepository without $HOME: %v", err)
	}
	home, err := currentUserHome()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(home) {
		t.Fatalf("home directory %q is not absolute", home)
	}
}
