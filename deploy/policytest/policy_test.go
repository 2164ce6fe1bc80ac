package policytest

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"
)

// policy is what the test reads of a ValidatingAdmissionPolicy.
type policy struct {
	Kind string `yaml:"kind"`
	Spec struct {
		MatchConditions []struct {
			Name       string `yaml:"name"`
			Expression string `yaml:"expression"`
		} `yaml:"matchConditions"`
		Validations []struct {
			Expression string `yaml:"expression"`
			Message    string `yaml:"message"`
		} `yaml:"validations"`
	} `yaml:"spec"`
}

// compiled is the policy's expressions, ready to run.
type compiled struct {
	match    []cel.Program
	validate []cel.Program
	messages []string
}

func load(t *testing.T) compiled {
	t.Helper()
	f, err := os.Open("../own-node-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var p policy
	dec := yaml.NewDecoder(f)
	for p.Kind != "ValidatingAdmissionPolicy" {
		p = policy{}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("no ValidatingAdmissionPolicy in own-node-policy.yaml: %v", err)
		}
	}
	env, err := cel.NewEnv(
		cel.Variable("object", cel.DynType),
		cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType),
	)
	if err != nil {
		t.Fatal(err)
	}
	prog := func(expr string) cel.Program {
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", expr, iss.Err())
		}
		if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
			t.Fatalf("%s: type %v, want bool", expr, ast.OutputType())
		}
		pr, err := env.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		return pr
	}
	var c compiled
	for _, m := range p.Spec.MatchConditions {
		c.match = append(c.match, prog(m.Expression))
	}
	for _, v := range p.Spec.Validations {
		c.validate = append(c.validate, prog(v.Expression))
		c.messages = append(c.messages, v.Message)
	}
	if len(c.match) == 0 || len(c.validate) == 0 {
		t.Fatal("the policy has no match conditions or no validations")
	}
	return c
}

// admit runs the policy on an update of oldObj to obj by request's user:
// matched says whether the policy applies, denied is the first failed
// validation's message (an error fails, as with failurePolicy: Fail).
func (c compiled) admit(t *testing.T, request, oldObj, obj string) (matched bool, denied string) {
	t.Helper()
	vars := map[string]any{}
	for k, s := range map[string]string{"request": request, "oldObject": oldObj, "object": obj} {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		vars[k] = v
	}
	for _, m := range c.match {
		out, _, err := m.Eval(vars)
		if err != nil {
			t.Fatalf("match condition: %v", err)
		}
		if out.Value() != true {
			return false, ""
		}
	}
	for i, v := range c.validate {
		out, _, err := v.Eval(vars)
		if err != nil {
			return true, "error: " + err.Error()
		}
		if out.Value() != true {
			return true, c.messages[i]
		}
	}
	return true, ""
}

const (
	installer = `{"userInfo": {"username": "system:serviceaccount:kube-system:snapboot-installer",
		"extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}}`
	nodeA = `{"metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a", "snapboot.dev/install": "true"},
		"annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
		"spec": {"podCIDR": "10.244.1.0/24", "taints": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]}}`
)

// node is nodeA with edit applied to its decoded form.
func node(t *testing.T, edit func(n map[string]any)) string {
	t.Helper()
	var n map[string]any
	if err := json.Unmarshal([]byte(nodeA), &n); err != nil {
		t.Fatal(err)
	}
	edit(n)
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func labels(n map[string]any) map[string]any {
	return n["metadata"].(map[string]any)["labels"].(map[string]any)
}

func TestOwnNodePolicy(t *testing.T) {
	c := load(t)
	labelled := node(t, func(n map[string]any) { labels(n)["snapboot.dev/node"] = "true" })
	for _, tc := range []struct {
		name             string
		request, old, nw string
		deniedWith       string // "" if allowed
	}{
		{"label its own node", installer, nodeA, labelled, ""},
		{"remove the label", installer, labelled, nodeA, ""},
		{"label it again", installer, labelled, labelled, ""},
		{"a node without annotations", installer,
			node(t, func(n map[string]any) { delete(n["metadata"].(map[string]any), "annotations") }),
			node(t, func(n map[string]any) {
				delete(n["metadata"].(map[string]any), "annotations")
				labels(n)["snapboot.dev/node"] = "true"
			}), ""},
		{"another node", installer,
			node(t, func(n map[string]any) { n["metadata"].(map[string]any)["name"] = "node-b" }),
			node(t, func(n map[string]any) {
				n["metadata"].(map[string]any)["name"] = "node-b"
				labels(n)["snapboot.dev/node"] = "true"
			}), "only the node its pod runs on"},
		{"a token without its pod's node", `{"userInfo": {"username": "system:serviceaccount:kube-system:snapboot-installer"}}`,
			nodeA, labelled, "only the node its pod runs on"},
		{"a token of two nodes", strings.Replace(installer, `["node-a"]`, `["node-a", "node-b"]`, 1),
			nodeA, labelled, "only the node its pod runs on"},
		{"another label", installer, nodeA,
			node(t, func(n map[string]any) { labels(n)["node-role.kubernetes.io/ingress"] = "" }), "only the label snapboot.dev/node"},
		{"a changed label", installer, nodeA,
			node(t, func(n map[string]any) { labels(n)["kubernetes.io/hostname"] = "node-z" }), "only the label snapboot.dev/node"},
		{"a removed label", installer, nodeA,
			node(t, func(n map[string]any) { delete(labels(n), "snapboot.dev/install") }), "only the label snapboot.dev/node"},
		{"the label set to false", installer, nodeA,
			node(t, func(n map[string]any) { labels(n)["snapboot.dev/node"] = "false" }), `only to "true"`},
		{"taints removed", installer, nodeA,
			node(t, func(n map[string]any) { delete(n["spec"].(map[string]any), "taints") }), "spec"},
		{"cordoned", installer, nodeA,
			node(t, func(n map[string]any) { n["spec"].(map[string]any)["unschedulable"] = true }), "spec"},
		{"an annotation", installer, nodeA,
			node(t, func(n map[string]any) { n["metadata"].(map[string]any)["annotations"].(map[string]any)["x"] = "y" }), "annotations"},
		{"an owner", installer, nodeA,
			node(t, func(n map[string]any) {
				n["metadata"].(map[string]any)["ownerReferences"] = []any{map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}}
			}), "owners"},
		{"another owner", installer,
			node(t, func(n map[string]any) {
				n["metadata"].(map[string]any)["ownerReferences"] = []any{map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}}
			}),
			node(t, func(n map[string]any) {
				n["metadata"].(map[string]any)["ownerReferences"] = []any{map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "name": "y", "uid": "2"}}
			}), "owners"},
		{"a finalizer", installer, nodeA,
			node(t, func(n map[string]any) { n["metadata"].(map[string]any)["finalizers"] = []any{"x/y"} }), "finalizers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			matched, denied := c.admit(t, tc.request, tc.old, tc.nw)
			if !matched {
				t.Fatal("the policy does not apply to the installer")
			}
			switch {
			case tc.deniedWith == "" && denied != "":
				t.Fatalf("denied (%s), want allowed", denied)
			case tc.deniedWith != "" && !strings.Contains(denied, tc.deniedWith):
				t.Fatalf("denied with %q, want a denial with %q", denied, tc.deniedWith)
			}
		})
	}

	// Anyone else (the kubelet, an administrator) is not its business.
	kubelet := `{"userInfo": {"username": "system:node:node-a"}}`
	if matched, _ := c.admit(t, kubelet, nodeA, node(t, func(n map[string]any) { labels(n)["x"] = "y" })); matched {
		t.Fatal("the policy applies to users other than the installer")
	}
}
