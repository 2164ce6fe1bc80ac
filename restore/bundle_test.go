package restore

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/restorehook"
)

// addHook adds hook to the bundle's config.json.
func addHook(bundle string, hook specs.Hook) error {
	return editSpec(bundle, func(doc map[string]json.RawMessage) (bool, error) { return addCreateRuntimeHook(doc, hook) })
}

// The hook goes after the spec's own createRuntime hooks, once however
// often it is added, and the rest of config.json stays as it was.
func TestAddCreateRuntimeHook(t *testing.T) {
	dir := t.TempDir()
	spec := `{"ociVersion":"1.2.0","x-unknown":7,"hooks":{"createRuntime":[{"path":"/usr/bin/cni-hook","args":["cni-hook","up"]}],"poststop":[{"path":"/usr/bin/down"}]}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	hook := specs.Hook{Path: "/bin/shim", Args: []string{"/bin/shim", "up-lo"}}
	for i := 0; i < 2; i++ {
		if err := addHook(dir, hook); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	var got struct {
		Unknown int         `json:"x-unknown"`
		Hooks   specs.Hooks `json:"hooks"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	cr := got.Hooks.CreateRuntime
	if got.Unknown != 7 || len(cr) != 2 || cr[0].Path != "/usr/bin/cni-hook" || cr[1].Path != "/bin/shim" || cr[1].Args[1] != "up-lo" ||
		len(got.Hooks.Poststop) != 1 {
		t.Fatalf("config.json after adding the hook twice: %s", data)
	}

	// A spec without hooks gets the one.
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "config.json"), []byte(`{"ociVersion":"1.2.0"}`), 0o600)
	if err := addHook(dir2, hook); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(filepath.Join(dir2, "config.json"))
	var s specs.Spec
	json.Unmarshal(data, &s)
	if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 {
		t.Fatalf("config.json: %s", data)
	}
}

// ArmDump, run once a restore has run or before the cold start after a
// failed one, takes the restore's hook out of the spec and leaves the
// caller's hooks and the rest as they were; a spec without it is not
// rewritten.
func TestArmDumpRemovesRestoreHook(t *testing.T) {
	dir := t.TempDir()
	spec := `{"ociVersion":"1.2.0","x-unknown":7,"hooks":{"createRuntime":[{"path":"/usr/bin/cni-hook","args":["cni-hook","up"]}]}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	ours := restorehook.Hook("/usr/local/bin/containerd-shim-snapboot-v1")
	if err := addHook(dir, ours); err != nil {
		t.Fatal(err)
	}
	if err := ArmDump(dir); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	var got struct {
		Unknown int         `json:"x-unknown"`
		Hooks   specs.Hooks `json:"hooks"`
	}
	json.Unmarshal(data, &got)
	if got.Unknown != 7 || len(got.Hooks.CreateRuntime) != 1 || got.Hooks.CreateRuntime[0].Path != "/usr/bin/cni-hook" {
		t.Fatalf("config.json after ArmDump: %s", data)
	}

	// Ours alone: no hooks left at all.
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "config.json"), []byte(`{"ociVersion":"1.2.0"}`), 0o600)
	if err := addHook(dir2, ours); err != nil {
		t.Fatal(err)
	}
	if err := editSpec(dir2, removeRestoreHook); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(filepath.Join(dir2, "config.json"))
	if strings.Contains(string(data), "hooks") {
		t.Fatalf("config.json: %s", data)
	}
}
