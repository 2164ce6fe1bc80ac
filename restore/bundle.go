package restore

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/restorehook"
)

// The bundle's config.json is read and edited as raw JSON, so that fields
// this code does not know survive untouched.

func readAnnotations(bundle string) (map[string]string, error) {
	doc, err := readSpecDoc(bundle)
	if err != nil {
		return nil, err
	}
	ann := map[string]string{}
	if raw, ok := doc["annotations"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &ann); err != nil {
			return nil, fmt.Errorf("spec annotations: %w", err)
		}
	}
	return ann, nil
}

// readSpec reads the whole spec, for the checks against the checkpoint.
func readSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse spec: %w", err)
	}
	return &s, nil
}

func readSpecDoc(bundle string) (map[string]json.RawMessage, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse spec: %w", err)
	}
	return doc, nil
}

// setAnnotation sets one annotation in the bundle's config.json.
func setAnnotation(bundle, key, value string) error {
	doc, err := readSpecDoc(bundle)
	if err != nil {
		return err
	}
	ann := map[string]string{}
	if raw, ok := doc["annotations"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &ann); err != nil {
			return fmt.Errorf("spec annotations: %w", err)
		}
	}
	ann[key] = value
	raw, err := json.Marshal(ann)
	if err != nil {
		return err
	}
	doc["annotations"] = raw
	return writeSpecDoc(bundle, doc)
}

// addCreateRuntimeHook appends hook to the createRuntime hooks of the
// bundle's config.json, unless it is there already.
func addCreateRuntimeHook(bundle string, hook specs.Hook) error {
	doc, err := readSpecDoc(bundle)
	if err != nil {
		return err
	}
	hooks := map[string]json.RawMessage{}
	if raw, ok := doc["hooks"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &hooks); err != nil {
			return fmt.Errorf("spec hooks: %w", err)
		}
	}
	var list []specs.Hook
	if raw, ok := hooks["createRuntime"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &list); err != nil {
			return fmt.Errorf("spec createRuntime hooks: %w", err)
		}
	}
	for _, h := range list {
		if h.Path == hook.Path && slices.Equal(h.Args, hook.Args) {
			return nil
		}
	}
	raw, err := json.Marshal(append(list, hook))
	if err != nil {
		return err
	}
	hooks["createRuntime"] = raw
	if doc["hooks"], err = json.Marshal(hooks); err != nil {
		return err
	}
	return writeSpecDoc(bundle, doc)
}

// removeRestoreHook takes the restore's createRuntime hook (restorehook)
// out of the bundle's config.json, if it is there.
func removeRestoreHook(bundle string) error {
	doc, err := readSpecDoc(bundle)
	if err != nil {
		return err
	}
	raw, ok := doc["hooks"]
	if !ok || string(raw) == "null" {
		return nil
	}
	hooks := map[string]json.RawMessage{}
	if err := json.Unmarshal(raw, &hooks); err != nil {
		return fmt.Errorf("spec hooks: %w", err)
	}
	var list []specs.Hook
	if raw, ok := hooks["createRuntime"]; !ok || string(raw) == "null" {
		return nil
	} else if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("spec createRuntime hooks: %w", err)
	}
	kept := slices.DeleteFunc(slices.Clone(list), func(h specs.Hook) bool {
		return len(h.Args) == 2 && h.Args[1] == restorehook.HookArg
	})
	if len(kept) == len(list) {
		return nil
	}
	if len(kept) == 0 {
		delete(hooks, "createRuntime")
	} else if hooks["createRuntime"], err = json.Marshal(kept); err != nil {
		return err
	}
	if len(hooks) == 0 {
		delete(doc, "hooks")
	} else if doc["hooks"], err = json.Marshal(hooks); err != nil {
		return err
	}
	return writeSpecDoc(bundle, doc)
}

// writeSpecDoc replaces the bundle's config.json with doc.
func writeSpecDoc(bundle string, doc map[string]json.RawMessage) error {
	data, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	path := filepath.Join(bundle, "config.json")
	tmp := path + ".snapboot-tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write spec: %w", err)
	}
	return nil
}
