package restore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/restorehook"
)

// The bundle's config.json is read and edited as raw JSON, so that fields
// this code does not know survive untouched.

// editSpec reads the bundle's config.json, lets edit change it, and
// writes it back once if edit says it did.
func editSpec(bundle string, edit func(doc map[string]json.RawMessage) (changed bool, err error)) error {
	doc, err := readSpecDoc(bundle)
	if err != nil {
		return err
	}
	changed, err := edit(doc)
	if changed {
		err = errors.Join(err, writeSpecDoc(bundle, doc))
	}
	return err
}

// annotations returns doc's annotations.
func annotations(doc map[string]json.RawMessage) (map[string]string, error) {
	ann := map[string]string{}
	if raw, ok := doc["annotations"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &ann); err != nil {
			return nil, fmt.Errorf("spec annotations: %w", err)
		}
	}
	return ann, nil
}

// annotate sets one annotation in doc, and says whether it changed.
func annotate(doc map[string]json.RawMessage, key, value string) (bool, error) {
	ann, err := annotations(doc)
	if err != nil {
		return false, err
	}
	if v, ok := ann[key]; ok && v == value {
		return false, nil
	}
	ann[key] = value
	doc["annotations"], err = json.Marshal(ann)
	return err == nil, err
}

// createRuntimeHooks returns doc's hooks, by kind, and its createRuntime
// hooks.
func createRuntimeHooks(doc map[string]json.RawMessage) (map[string]json.RawMessage, []specs.Hook, error) {
	hooks := map[string]json.RawMessage{}
	if raw, ok := doc["hooks"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &hooks); err != nil {
			return nil, nil, fmt.Errorf("spec hooks: %w", err)
		}
	}
	var list []specs.Hook
	if raw, ok := hooks["createRuntime"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, nil, fmt.Errorf("spec createRuntime hooks: %w", err)
		}
	}
	return hooks, list, nil
}

// setCreateRuntimeHooks puts list back into doc as its createRuntime
// hooks, leaving out what would be empty.
func setCreateRuntimeHooks(doc, hooks map[string]json.RawMessage, list []specs.Hook) error {
	var err error
	if len(list) == 0 {
		delete(hooks, "createRuntime")
	} else if hooks["createRuntime"], err = json.Marshal(list); err != nil {
		return err
	}
	if len(hooks) == 0 {
		delete(doc, "hooks")
		return nil
	}
	doc["hooks"], err = json.Marshal(hooks)
	return err
}

// addCreateRuntimeHook appends hook to doc's createRuntime hooks, unless
// it is there already, and says whether it changed doc.
func addCreateRuntimeHook(doc map[string]json.RawMessage, hook specs.Hook) (bool, error) {
	hooks, list, err := createRuntimeHooks(doc)
	if err != nil {
		return false, err
	}
	for _, h := range list {
		if h.Path == hook.Path && slices.Equal(h.Args, hook.Args) {
			return false, nil
		}
	}
	return true, setCreateRuntimeHooks(doc, hooks, append(list, hook))
}

// removeRestoreHook takes the restore's createRuntime hook (restorehook)
// out of doc, and says whether it was there.
func removeRestoreHook(doc map[string]json.RawMessage) (bool, error) {
	hooks, list, err := createRuntimeHooks(doc)
	if err != nil {
		return false, err
	}
	kept := slices.DeleteFunc(slices.Clone(list), func(h specs.Hook) bool {
		return len(h.Args) == 2 && h.Args[1] == restorehook.HookArg
	})
	if len(kept) == len(list) {
		return false, nil
	}
	return true, setCreateRuntimeHooks(doc, hooks, kept)
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
