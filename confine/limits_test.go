package confine

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/rlimit"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

const unlimited = ^uint64(0)

// leader is a thread group leader's task state with every rlimit
// unlimited and the given oom_score_adj.
func leader(oom int32) *criucore.TaskCoreEntry {
	tc := &criucore.TaskCoreEntry{TaskState: proto.Uint32(1), ExitCode: proto.Uint32(0), Personality: proto.Uint32(0),
		Flags: proto.Uint32(0), BlkSigset: proto.Uint64(0), Comm: proto.String("app"), OomScoreAdj: proto.Int32(oom),
		Rlimits: &criucore.TaskRlimitsEntry{}}
	for range rlimitNames {
		tc.Rlimits.Rlimits = append(tc.Rlimits.Rlimits, &rlimit.RlimitEntry{Cur: proto.Uint64(unlimited), Max: proto.Uint64(unlimited)})
	}
	return tc
}

func tcOf(t *testing.T, path string) *criucore.TaskCoreEntry {
	t.Helper()
	_, core, err := decodeCore(path)
	if err != nil {
		t.Fatal(err)
	}
	return core.GetTc()
}

var plainHost = hostState{oomScoreAdj: 0, loginuid: invalidUID,
	netSysctl: func(path, name string) (string, error) { return nodeSysctls(name) }}

func TestRlimitsAndOOMScoreNarrowed(t *testing.T) {
	imgs := writeImages(t, task{tc: leader(-1000)})
	s := spec(0, nil, false)
	s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 4096}}
	oom := 500
	s.Process.OOMScoreAdj = &oom
	res, err := apply(imgs, t.TempDir(), s, plainHost, onHost)
	if err != nil {
		t.Fatal(err)
	}
	if res.Narrowed != 1 || res.ImagesDir == imgs {
		t.Fatalf("result %+v", res)
	}
	tc := tcOf(t, filepath.Join(res.ImagesDir, "core-1.img"))
	if got := tc.GetOomScoreAdj(); got != 500 {
		t.Errorf("oom_score_adj %d, want the spec's 500", got)
	}
	nofile := tc.GetRlimits().GetRlimits()[unix.RLIMIT_NOFILE]
	if nofile.GetMax() != 4096 || nofile.GetCur() != 4096 {
		t.Errorf("RLIMIT_NOFILE %d/%d, want hard 4096 and soft within it", nofile.GetCur(), nofile.GetMax())
	}
	// Where the spec says nothing, the shim's own hard limit bounds it.
	var own unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &own); err != nil {
		t.Fatal(err)
	}
	if got := tc.GetRlimits().GetRlimits()[unix.RLIMIT_MEMLOCK].GetMax(); got != own.Max {
		t.Errorf("RLIMIT_MEMLOCK hard %d, want the shim's %d", got, own.Max)
	}
}

func TestOOMScoreWithoutSpecValue(t *testing.T) {
	// No value in the spec: a lower score than runc's would pass on is
	// raised to it, a higher one kept.
	for _, c := range []struct{ image, want int32 }{{-1000, 100}, {300, 300}} {
		imgs := writeImages(t, task{tc: leader(c.image)})
		res, err := apply(imgs, t.TempDir(), spec(0, nil, false), hostState{oomScoreAdj: 100, loginuid: invalidUID}, onHost)
		if err != nil {
			t.Fatal(err)
		}
		if got := tcOf(t, filepath.Join(res.ImagesDir, "core-1.img")).GetOomScoreAdj(); got != c.want {
			t.Errorf("image %d: oom_score_adj %d, want %d", c.image, got, c.want)
		}
	}
}

// shimLimitsLeader is leader(0) with the shim's own limits, as a cold
// start would inherit them.
func shimLimitsLeader(t *testing.T) *criucore.TaskCoreEntry {
	t.Helper()
	tc := leader(0)
	for i, r := range tc.Rlimits.Rlimits {
		var own unix.Rlimit
		if err := unix.Getrlimit(i, &own); err != nil {
			t.Fatal(err)
		}
		r.Cur, r.Max = proto.Uint64(min(own.Cur, own.Max)), proto.Uint64(own.Max)
	}
	return tc
}

func TestLimitsWithinTheSpecAreKept(t *testing.T) {
	imgs := writeImages(t, task{tc: shimLimitsLeader(t)})
	res, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost)
	if err != nil || res.ImagesDir != imgs || res.Narrowed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestIDsAndLSM(t *testing.T) {
	gid := func(g uint32) *uint32 { return &g }
	noSetid := []string{"CAP_CHOWN"}
	withSetid := []string{"CAP_SETUID", "CAP_SETGID"}
	profiled := func(caps []string, profile string) *specs.Spec {
		s := spec(0, caps, false)
		s.Process.ApparmorProfile = profile
		return s
	}
	user := func(uid, g uint32, extra []uint32, caps []string) *specs.Spec {
		s := spec(uid, caps, false)
		s.Process.User.GID, s.Process.User.AdditionalGids = g, extra
		return s
	}
	cases := []struct {
		name   string
		task   task
		spec   *specs.Spec
		host   hostState
		refuse bool
	}{
		{"other user, no CAP_SETUID", task{uid: 1001}, user(1000, 1001, nil, noSetid), plainHost, true},
		{"other user, CAP_SETUID", task{uid: 1001}, user(1000, 1001, nil, withSetid), plainHost, false},
		{"same user", task{uid: 1000}, user(1000, 1000, nil, noSetid), plainHost, false},
		{"other group, no CAP_SETGID", task{uid: 1000, gid: gid(50)}, user(1000, 1000, nil, noSetid), plainHost, true},
		{"an additional group", task{uid: 1000, groups: []uint32{50}}, user(1000, 1000, []uint32{50}, noSetid), plainHost, false},
		{"a group not in the spec", task{uid: 1000, groups: []uint32{50}}, user(1000, 1000, nil, noSetid), plainHost, true},
		{"a profile the host does not enforce", task{}, profiled(nil, "cri-containerd.apparmor.d"), plainHost, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := apply(writeImages(t, c.task), t.TempDir(), c.spec, c.host, onHost)
			if c.refuse != errors.Is(err, ErrRefused) {
				t.Fatalf("refuse=%v, got %v", c.refuse, err)
			}
			if !c.refuse && err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestNoNewPrivsSetWhereTheSpecWantsIt(t *testing.T) {
	s := spec(0, nil, false)
	s.Process.NoNewPrivileges = true
	imgs := writeImages(t, task{})
	res, err := apply(imgs, t.TempDir(), s, plainHost, onHost)
	if err != nil {
		t.Fatal(err)
	}
	if res.Narrowed != 1 {
		t.Fatalf("result %+v: the task was not changed", res)
	}
	_, core, err := decodeCore(filepath.Join(res.ImagesDir, "core-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !noNewPrivs(core.GetThreadCore().GetCreds()) {
		t.Fatal("no_new_privs not set in the rewritten image")
	}
	// Set already: the images are used as they are.
	res, err = apply(res.ImagesDir, t.TempDir(), s, plainHost, onHost)
	if err != nil || res.Narrowed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	// Not asked for: left alone.
	if res, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); err != nil || res.Narrowed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestSetNoNewPrivsKeepsOtherUnknownFields(t *testing.T) {
	cr := &creds.CredsEntry{}
	var raw []byte
	raw = protowire.AppendTag(raw, 19, protowire.BytesType)
	raw = protowire.AppendBytes(raw, []byte("x"))
	raw = protowire.AppendTag(raw, noNewPrivsField, protowire.VarintType)
	raw = protowire.AppendVarint(raw, 0)
	cr.ProtoReflect().SetUnknown(raw)
	if noNewPrivs(cr) {
		t.Fatal("no_new_privs=0 read as set")
	}
	setNoNewPrivs(cr)
	if !noNewPrivs(cr) {
		t.Fatal("not set")
	}
	fields := 0
	forEachField(cr.ProtoReflect().GetUnknown(), func(num protowire.Number, _ protowire.Type, _ uint64, _ []byte) {
		fields++
		if num != 19 && num != noNewPrivsField {
			t.Errorf("field %d", num)
		}
	})
	if fields != 2 {
		t.Fatalf("%d unknown fields, want 2 (the other one and no_new_privs)", fields)
	}
}

func TestLSMProfileIsTheSpecs(t *testing.T) {
	s := spec(0, nil, false)
	s.Process.ApparmorProfile = "cri-containerd.apparmor.d"
	for _, c := range []struct {
		name, image string
		narrowed    int
	}{{"no profile", "", 1}, {"another profile", "unconfined-ish", 1}, {"the spec's", "cri-containerd.apparmor.d", 0}} {
		res, err := apply(writeImages(t, task{lsm: c.image}), t.TempDir(), s, hostState{apparmor: true, loginuid: invalidUID}, onHost)
		if err != nil {
			t.Fatal(err)
		}
		if res.Narrowed != c.narrowed {
			t.Errorf("%s: narrowed %d, want %d", c.name, res.Narrowed, c.narrowed)
		}
		_, core, err := decodeCore(filepath.Join(res.ImagesDir, "core-1.img"))
		if err != nil {
			t.Fatal(err)
		}
		if got := core.GetThreadCore().GetCreds().GetLsmProfile(); got != s.Process.ApparmorProfile {
			t.Errorf("%s: profile %q, want the spec's", c.name, got)
		}
	}
	// Too few rlimits: CRIU would keep its own for the rest.
	tc := leader(0)
	tc.Rlimits.Rlimits = tc.Rlimits.Rlimits[:7]
	if _, err := apply(writeImages(t, task{tc: tc}), t.TempDir(), spec(0, nil, false), plainHost, onHost); !errors.Is(err, ErrRefused) {
		t.Errorf("7 rlimits: got %v, want ErrRefused", err)
	}
}

func TestAmbientCapabilitiesNarrowed(t *testing.T) {
	const capNetBindService = 10
	cr := &creds.CredsEntry{}
	var raw []byte
	for _, w := range []uint64{0xffffffff, 0x1ff} {
		raw = protowire.AppendTag(raw, capAmbField, protowire.VarintType)
		raw = protowire.AppendVarint(raw, w)
	}
	cr.ProtoReflect().SetUnknown(raw)
	if !narrowAmbient(cr, 1<<capNetBindService) {
		t.Fatal("nothing narrowed")
	}
	var got []uint32
	forEachField(cr.ProtoReflect().GetUnknown(), func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) {
		if num == capAmbField {
			got = append(got, uint32(v))
		}
	})
	if len(got) != 2 || got[0] != 1<<capNetBindService || got[1] != 0 {
		t.Fatalf("cap_amb %#x, want [%#x 0]", got, 1<<capNetBindService)
	}
	if narrowAmbient(cr, 1<<capNetBindService) {
		t.Fatal("narrowed twice")
	}
}
