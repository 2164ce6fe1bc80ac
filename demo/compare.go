package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// shimBinary is the shim's file name; containerd finds it on its PATH.
const shimBinary = "containerd-shim-snapboot-v1"

// compareBinDir makes the directory the stack's containerd finds the shim
// in when two shims are compared: a copy of binDir's CLI, and a shim that
// compareShims replaces before every start.
func compareBinDir(dir, binDir string) (string, error) {
	out := filepath.Join(dir, "bin")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	for _, name := range []string{"snapboot", shimBinary} {
		if err := installFile(filepath.Join(binDir, name), filepath.Join(out, name)); err != nil {
			return "", err
		}
	}
	return out, nil
}

// installFile copies src to dst by renaming a copy over it: a shim still
// running from dst keeps its file.
func installFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst+".new", data, 0o755); err != nil {
		return err
	}
	return os.Rename(dst+".new", dst)
}

// compareShims checkpoints the app once, then, for -runs rounds, starts
// it with each shim binary (the order alternates from round to round):
// with an empty cache, then, once filled, with a warm one; and the floor
// once per round. The machine's noise moves whole benches; shims compared
// within one stack, a few seconds apart, show what a change did. It prints
// the medians and how many rounds each shim won.
func (d *demo) compareShims(ctx context.Context, current, other string) error {
	ref := d.s.registryAddr + "/demo/rails:checkpoint"
	say("cold start of the app, to checkpoint it")
	donor := d.newID("cold")
	if _, _, err := d.runContainer(ctx, donor); err != nil {
		return err
	}
	if err := d.checkpoint(ctx, donor, ref, &results{}); err != nil {
		return err
	}
	d.s.removeContainer(ctx, donor)

	shims := []string{current, other}
	empty, warm := make([][]float64, 2), make([][]float64, 2)
	var floor []float64
	dst := filepath.Join(d.s.binDir, shimBinary)
	for round := 0; round < d.o.runs; round++ {
		for k := 0; k < 2; k++ {
			i := (round + k) % 2
			if err := installFile(shims[i], dst); err != nil {
				return err
			}
			if _, err := d.s.snapboot(ctx, "cache", "prune", "--all"); err != nil {
				return err
			}
			e, _, err := d.snapbootByClient(ctx, "compare-empty", ref, "")
			if err != nil {
				return fmt.Errorf("%s: %w", shims[i], err)
			}
			if err := d.waitCached(ctx, ref); err != nil {
				return err
			}
			time.Sleep(time.Second) // the empty-cache start's shim exits
			w, _, err := d.snapbootByClient(ctx, "compare-warm", ref, "")
			if err != nil {
				return fmt.Errorf("%s: %w", shims[i], err)
			}
			empty[i], warm[i] = append(empty[i], e.Seconds()), append(warm[i], w.Seconds())
		}
		t, _, err := d.floor(ctx, ref)
		if err != nil {
			return err
		}
		floor = append(floor, t.Seconds())
		say("round %d/%d: empty cache %.2f s (%s) / %.2f s (%s), warm %.2f / %.2f s, floor %.2f s", round+1, d.o.runs,
			empty[0][round], filepath.Base(current), empty[1][round], filepath.Base(other), warm[0][round], warm[1][round], t.Seconds())
	}
	wins := func(a, b []float64) (n int) {
		for i := range a {
			if a[i] < b[i] {
				n++
			}
		}
		return n
	}
	fmt.Printf("\n| to first 200, %d rounds | %s | %s |\n| --- | --- | --- |\n", d.o.runs, current, other)
	fmt.Printf("| empty cache | %v, faster in %d | %v, faster in %d |\n", stats(empty[0]), wins(empty[0], empty[1]), stats(empty[1]), wins(empty[1], empty[0]))
	fmt.Printf("| warm cache | %v, faster in %d | %v, faster in %d |\n", stats(warm[0]), wins(warm[0], warm[1]), stats(warm[1]), wins(warm[1], warm[0]))
	fmt.Printf("| floor (bare runc restore), same rounds | %v | |\n", stats(floor))
	return nil
}
