// Package policytest checks deploy/own-node-policy.yaml, the admission
// policy that narrows the installer's right to patch nodes, by evaluating
// its CEL expressions with cel-go against node updates. It is a module of
// its own, so that cel-go is not a dependency of snapboot.
package policytest
