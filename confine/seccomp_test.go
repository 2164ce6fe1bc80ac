package confine

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// runcFilter is the filter runc 1.5.2 installed for containerd's default
// profile (read from a probe container); its first 14 instructions are
// runc's stub, with the architectures in one of the orders runc uses.
func runcFilter(t *testing.T) []byte {
	t.Helper()
	f, err := os.ReadFile("testdata/runc-1.5.2-default-profile.bpf")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The other two orders of the stub's architectures seen from runc 1.5.2.
var otherStubs = [][]insn{
	{
		{0x20, 0, 0, 4}, {0x15, 5, 0, 0xc000003e}, {0x15, 1, 0, 0x40000003}, {0x05, 0, 0, 10},
		{0x20, 0, 0, 0}, {0x25, 7, 0, 0x1c8}, {0x05, 0, 0, 7}, {0x20, 0, 0, 0},
		{0x45, 1, 0, 0x40000000}, {0x25, 3, 1, 0x1c8}, {0x25, 2, 0, 0x40000223}, {0x05, 0, 0, 2},
		{0x05, 0, 0, 1}, {0x06, 0, 0, 0x00050026},
	},
	{
		{0x20, 0, 0, 4}, {0x15, 7, 0, 0x40000003}, {0x15, 1, 0, 0xc000003e}, {0x05, 0, 0, 10},
		{0x20, 0, 0, 0}, {0x45, 1, 0, 0x40000000}, {0x25, 6, 1, 0x1c8}, {0x25, 5, 0, 0x40000223},
		{0x05, 0, 0, 5}, {0x20, 0, 0, 0}, {0x25, 2, 0, 0x1c8}, {0x05, 0, 0, 2},
		{0x05, 0, 0, 1}, {0x06, 0, 0, 0x00050026},
	},
}

func withPrefix(f []byte, prefix []insn) []byte {
	out := append([]byte(nil), f...)
	for i, in := range prefix {
		binary.NativeEndian.PutUint16(out[i*8:], in.code)
		out[i*8+2], out[i*8+3] = in.jt, in.jf
		binary.NativeEndian.PutUint32(out[i*8+4:], in.k)
	}
	return out
}

func TestSameFilterAcrossStubOrders(t *testing.T) {
	ref := runcFilter(t)
	if err := sameFilter(ref, ref); err != nil {
		t.Fatal(err)
	}
	for i, stub := range otherStubs {
		img := withPrefix(ref, stub)
		if string(img) == string(ref) {
			t.Fatalf("stub %d is the reference's", i)
		}
		if err := sameFilter(img, ref); err != nil {
			t.Errorf("stub %d: %v", i, err)
		}
	}
}

func TestOtherFiltersDiffer(t *testing.T) {
	ref := runcFilter(t)
	stub := otherStubs[0]
	edit := func(i int, in insn) []insn {
		s := append([]insn(nil), stub...)
		s[i] = in
		return s
	}
	cases := map[string][]byte{
		// x86_64 calls past 456 no longer get ENOSYS: they go on into
		// libseccomp's program (no weaker here, but not runc's).
		"another last system call": withPrefix(ref, edit(5, insn{0x25, 7, 0, 0x1c9})),
		// The stub answers everything with ALLOW.
		"stub allows": withPrefix(ref, edit(13, insn{0x06, 0, 0, 0x7fff0000})),
		// The stub looks at an argument.
		"argument load": withPrefix(ref, edit(4, insn{0x20, 0, 0, 16})),
		// A jump past the x86_64 checks.
		"other jump": withPrefix(ref, edit(1, insn{0x15, 6, 0, 0xc000003e})),
		"shorter":    ref[:len(ref)-8],
	}
	// libseccomp's program answers ALLOW where the profile says ERRNO.
	body := append([]byte(nil), ref...)
	for i := len(body)/8 - 1; i > 14; i-- {
		if binary.NativeEndian.Uint16(body[i*8:]) == 0x06 && binary.NativeEndian.Uint32(body[i*8+4:]) == 0x00050001 {
			binary.NativeEndian.PutUint32(body[i*8+4:], 0x7fff0000)
			break
		}
	}
	if string(body) == string(ref) {
		t.Fatal("no ERRNO(EPERM) answer in the reference")
	}
	cases["program allows"] = body
	for name, img := range cases {
		if err := sameFilter(img, ref); err == nil {
			t.Errorf("%s: taken as runc's filter", name)
		}
	}
}

// writeSeccomp writes seccomp.img with filters, each the one before's prev
// when chained.
func writeSeccomp(t *testing.T, dir string, filters ...*seccomp.SeccompFilter) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "seccomp.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img := &crit.CriuImage{Magic: "SECCOMP", Entries: []*crit.CriuEntry{{Message: &seccomp.SeccompEntry{SeccompFilters: filters}}}}
	if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
		t.Fatal(err)
	}
}

// writePstree writes pstree.img with one task, pid 1, of threads (pid 1
// among them).
func writePstree(t *testing.T, dir string, threads ...uint32) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "pstree.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e := &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1), Threads: threads}
	if err := crit.New(nil, f, "", false, false).Encode(&crit.CriuImage{Magic: "PSTREE", Entries: []*crit.CriuEntry{{Message: e}}}); err != nil {
		t.Fatal(err)
	}
}

// setSeccomp points a core image's thread core at a mode and filter.
func setSeccomp(t *testing.T, path string, mode criucore.SeccompMode, top uint32) {
	t.Helper()
	img, core, err := decodeCore(path)
	if err != nil {
		t.Fatal(err)
	}
	core.ThreadCore.SeccompMode = mode.Enum()
	core.ThreadCore.SeccompFilter = proto.Uint32(top)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
		t.Fatal(err)
	}
}

// Threads: CRIU's own layout for threads that share a chain (the leader's
// filters with TSYNC, the others' seccomp off) passes; TSYNC anywhere else
// could leave a thread without runc's filter, and is refused.
func TestSeccompThreads(t *testing.T) {
	ref := runcFilter(t)
	allowAll := make([]byte, 8)
	binary.NativeEndian.PutUint16(allowAll, 0x06)
	binary.NativeEndian.PutUint32(allowAll[4:], 0x7fff0000)
	big := make([]byte, 0, 4096*8)
	for range 4096 {
		big = append(big, allowAll...)
	}
	tsync := proto.Uint32(flagTSYNC)
	type thread struct {
		mode criucore.SeccompMode
		top  uint32
	}
	cases := map[string]struct {
		leader, other thread
		filters       []*seccomp.SeccompFilter
		refused       string
	}{
		"shared chain, synced": {thread{criucore.SeccompMode_filter, 0}, thread{criucore.SeccompMode_disabled, 0},
			[]*seccomp.SeccompFilter{{Filter: ref, Flags: tsync}}, ""},
		"shared chain, not synced": {thread{criucore.SeccompMode_filter, 0}, thread{criucore.SeccompMode_disabled, 0},
			[]*seccomp.SeccompFilter{{Filter: ref}}, "without seccomp"},
		"own chains": {thread{criucore.SeccompMode_filter, 0}, thread{criucore.SeccompMode_filter, 1},
			[]*seccomp.SeccompFilter{{Filter: ref}, {Filter: withPrefix(ref, otherStubs[0])}}, ""},
		"thread without runc's filter": {thread{criucore.SeccompMode_filter, 0}, thread{criucore.SeccompMode_filter, 1},
			[]*seccomp.SeccompFilter{{Filter: ref}, {Filter: allowAll}}, "core-2.img does not run"},
		// The leader's TSYNC install of runc's filter fails (the other
		// thread has filters of its own) with a positive return, which
		// CRIU takes for success: the leader would run allow-all only.
		"TSYNC beside a thread's own filters": {thread{criucore.SeccompMode_filter, 1}, thread{criucore.SeccompMode_filter, 3},
			[]*seccomp.SeccompFilter{{Filter: ref, Flags: tsync}, {Filter: big, Prev: proto.Uint32(0)}, {Filter: ref}, {Filter: allowAll, Prev: proto.Uint32(2)}}, "flags"},
	}
	for name, c := range cases {
		imgs := writeImages(t, task{seccomp: c.leader.mode, tc: leader(0)}, task{seccomp: c.other.mode})
		setSeccomp(t, filepath.Join(imgs, "core-1.img"), c.leader.mode, c.leader.top)
		setSeccomp(t, filepath.Join(imgs, "core-2.img"), c.other.mode, c.other.top)
		writePstree(t, imgs, 1, 2)
		writeSeccomp(t, imgs, c.filters...)
		host := plainHost
		host.seccompFilter = ref
		_, err := apply(imgs, t.TempDir(), spec(0, nil, true), host, onHost)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.refused != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("%s: got %v, want a refusal saying %q", name, err, c.refused)
		}
	}
	// A thread's core with task fields: CRIU refuses it, so do we.
	imgs := writeImages(t, task{seccomp: criucore.SeccompMode_filter, tc: leader(0)}, task{seccomp: criucore.SeccompMode_filter, tc: leader(0)})
	writePstree(t, imgs, 1, 2)
	writeSeccomp(t, imgs, &seccomp.SeccompFilter{Filter: ref})
	host := plainHost
	host.seccompFilter = ref
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, true), host, onHost); err == nil || !strings.Contains(err.Error(), "task fields") {
		t.Errorf("thread with task fields: %v", err)
	}
}

func TestSeccompChecks(t *testing.T) {
	ref := runcFilter(t)
	variant := withPrefix(ref, otherStubs[1])
	allowAll := make([]byte, 8)
	binary.NativeEndian.PutUint16(allowAll, 0x06)
	binary.NativeEndian.PutUint32(allowAll[4:], 0x7fff0000)
	s := spec(0, nil, true)
	oldMode := leader(0)
	oldMode.OldSeccompMode = criucore.SeccompMode_disabled.Enum()
	oldFilter := leader(0)
	oldFilter.OldSeccompFilter = proto.Uint32(1)
	type seccompCase struct {
		mode    criucore.SeccompMode
		top     uint32
		tc      *criucore.TaskCoreEntry
		filters []*seccomp.SeccompFilter
		specAll bool
		refused string
	}
	cases := map[string]seccompCase{
		"runc's filter, another stub order": {mode: criucore.SeccompMode_filter, filters: []*seccomp.SeccompFilter{{Filter: variant}}},
		// The app added a filter of its own on top of runc's.
		"runc's and the app's": {mode: criucore.SeccompMode_filter, top: 1,
			filters: []*seccomp.SeccompFilter{{Filter: ref}, {Filter: allowAll, Prev: proto.Uint32(0)}}},
		"strict mode": {mode: criucore.SeccompMode_strict},
		"allow-all filter": {mode: criucore.SeccompMode_filter, filters: []*seccomp.SeccompFilter{{Filter: allowAll}},
			refused: "does not run the seccomp filter"},
		"no filter": {mode: criucore.SeccompMode_disabled, refused: "without seccomp"},
		// The task core's old field wins over the thread core's in CRIU.
		"old per-task mode off": {mode: criucore.SeccompMode_filter, filters: []*seccomp.SeccompFilter{{Filter: ref}},
			tc: oldMode, refused: "without seccomp"},
		"old per-task filter index": {mode: criucore.SeccompMode_filter,
			filters: []*seccomp.SeccompFilter{{Filter: ref}, {Filter: allowAll}},
			tc:      oldFilter, refused: "does not run"},
		"index out of range": {mode: criucore.SeccompMode_filter, top: 3, filters: []*seccomp.SeccompFilter{{Filter: ref}}, refused: "not in seccomp.img"},
		"chain loops":        {mode: criucore.SeccompMode_filter, filters: []*seccomp.SeccompFilter{{Filter: allowAll, Prev: proto.Uint32(0)}}, refused: "loops"},
		"spec-allow flag":    {mode: criucore.SeccompMode_filter, filters: []*seccomp.SeccompFilter{{Filter: ref, Flags: proto.Uint32(flagSpecAllow)}}, refused: "flags"},
		"spec-allow flag the spec sets": {mode: criucore.SeccompMode_filter, specAll: true,
			filters: []*seccomp.SeccompFilter{{Filter: ref, Flags: proto.Uint32(flagSpecAllow | flagTSYNC)}}},
		"listener flag": {mode: criucore.SeccompMode_filter, filters: []*seccomp.SeccompFilter{{Filter: ref, Flags: proto.Uint32(1 << 3)}}, refused: "flags"},
	}
	for name, c := range cases {
		tk := task{uid: 0, seccomp: c.mode, tc: c.tc}
		imgs := writeImages(t, tk)
		if c.top != 0 {
			// Point the thread core at filter c.top.
			path := filepath.Join(imgs, "core-1.img")
			img, core, err := decodeCore(path)
			if err != nil {
				t.Fatal(err)
			}
			core.ThreadCore.SeccompFilter = proto.Uint32(c.top)
			f, _ := os.Create(path)
			if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		if c.filters != nil {
			writeSeccomp(t, imgs, c.filters...)
		}
		writePstree(t, imgs, 1)
		sp := s
		if c.specAll {
			sp = spec(0, nil, true)
			sp.Linux.Seccomp.Flags = []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagSpecAllow}
		}
		host := plainHost
		host.seccompFilter = ref
		_, err := apply(imgs, t.TempDir(), sp, host, onHost)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.refused != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("%s: got %v, want a refusal saying %q", name, err, c.refused)
		}
	}
	// Without the filter runc installs, a spec with a profile restores
	// nothing.
	imgs := writeImages(t, task{seccomp: criucore.SeccompMode_filter})
	writeSeccomp(t, imgs, &seccomp.SeccompFilter{Filter: ref})
	writePstree(t, imgs, 1)
	if _, err := apply(imgs, t.TempDir(), s, plainHost, onHost); !errors.Is(err, ErrRefused) {
		t.Errorf("no reference filter: %v", err)
	}
}
