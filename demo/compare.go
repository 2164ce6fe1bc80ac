package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// A contender is one side of a comparison: the checkpoint it restores,
// and what to do before each of its starts.
type contender struct {
	name    string
	ref     string
	prepare func() error
}

// compareShims checkpoints the app once and compares the shim in binDir
// (current) with another build of it: see compare.
func (d *demo) compareShims(ctx context.Context, current, other string) error {
	ref := d.s.registryAddr + "/demo/rails:checkpoint"
	if err := d.donorCheckpoints(ctx, []string{ref}, []string{d.o.compareCompression}); err != nil {
		return err
	}
	if d.o.compareLink {
		// The same repository, through the link (see linkMbps).
		ref = d.s.link.addr() + "/demo/rails:checkpoint"
	}
	dst := filepath.Join(d.s.binDir, shimBinary)
	var cs []contender
	for _, shim := range []string{current, other} {
		cs = append(cs, contender{name: shim, ref: ref, prepare: func() error { return installFile(shim, dst) }})
	}
	return d.compare(ctx, cs)
}

// compareLevels checkpoints one donor twice, packed at two compression
// levels, and compares restoring the two checkpoints with one shim: see
// compare.
func (d *demo) compareLevels(ctx context.Context, levels []string) error {
	var refs []string
	for _, l := range levels {
		refs = append(refs, d.s.registryAddr+"/demo/rails:checkpoint-"+l)
	}
	if err := d.donorCheckpoints(ctx, refs, levels); err != nil {
		return err
	}
	var cs []contender
	for i, l := range levels {
		cs = append(cs, contender{name: "--compression " + l, ref: refs[i], prepare: func() error { return nil }})
	}
	return d.compare(ctx, cs)
}

// donorCheckpoints boots the app cold and checkpoints it into each of
// refs, packed at the matching level ("" for the default); the donor
// keeps running between checkpoints and exits after the last one.
func (d *demo) donorCheckpoints(ctx context.Context, refs, levels []string) error {
	say("cold start of the app, to checkpoint it")
	donor := d.newID("cold")
	if _, _, err := d.runContainer(ctx, donor); err != nil {
		return err
	}
	for i, ref := range refs {
		flags := []string{"--exit"}
		if i < len(refs)-1 {
			flags = []string{"--leave-running"}
		}
		if levels[i] != "" {
			flags = append(flags, "--compression", levels[i])
		}
		if _, err := d.checkpoint(ctx, donor, ref, flags...); err != nil {
			return err
		}
	}
	d.s.removeContainer(ctx, donor)
	return nil
}

// compare starts the app, for -runs rounds, as each of two contenders
// (the order alternates from round to round): with an empty cache, then,
// once filled, with a warm one; and the floor once per round. The
// machine's noise moves whole benches; contenders compared within one
// stack, a few seconds apart, show what a change did. It prints the
// medians and how many rounds each contender won.
func (d *demo) compare(ctx context.Context, cs []contender) error {
	empty, warm := make([][]float64, 2), make([][]float64, 2)
	var floor []float64
	for round := 0; round < d.o.runs; round++ {
		for k := 0; k < 2; k++ {
			i := (round + k) % 2
			c := cs[i]
			if err := c.prepare(); err != nil {
				return err
			}
			if _, err := d.s.snapboot(ctx, "cache", "prune", "--all"); err != nil {
				return err
			}
			e, _, err := d.snapbootByClient(ctx, "compare-empty", c.ref, "", false)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			w, _, err := d.snapbootByClient(ctx, "compare-warm", c.ref, "", true)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			empty[i], warm[i] = append(empty[i], e.Seconds()), append(warm[i], w.Seconds())
		}
		t, _, err := d.floor(ctx, cs[0].ref)
		if err != nil {
			return err
		}
		floor = append(floor, t.Seconds())
		say("round %d/%d: empty cache %.2f s (%s) / %.2f s (%s), warm %.2f / %.2f s, floor %.2f s", round+1, d.o.runs,
			empty[0][round], filepath.Base(cs[0].name), empty[1][round], filepath.Base(cs[1].name), warm[0][round], warm[1][round], t.Seconds())
	}
	wins := func(a, b []float64) (n int) {
		for i := range a {
			if a[i] < b[i] {
				n++
			}
		}
		return n
	}
	fmt.Printf("\n| to first 200, %d rounds | %s | %s |\n| --- | --- | --- |\n", d.o.runs, cs[0].name, cs[1].name)
	fmt.Printf("| empty cache | %v, faster in %d | %v, faster in %d |\n", stats(empty[0]), wins(empty[0], empty[1]), stats(empty[1]), wins(empty[1], empty[0]))
	fmt.Printf("| warm cache | %v, faster in %d | %v, faster in %d |\n", stats(warm[0]), wins(warm[0], warm[1]), stats(warm[1]), wins(warm[1], warm[0]))
	fmt.Printf("| floor (bare runc restore of %s), same rounds | %v | |\n", cs[0].name, stats(floor))
	return nil
}
