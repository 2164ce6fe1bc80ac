//go:build integration && linux

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"google.golang.org/protobuf/proto"
)

// TestCraftedVolumeStaysPrivate restores a checkpoint whose volume mount
// was edited into a slave of a peer group outside the container. The
// node's volume is a shared mount, as every mount is on a systemd node,
// and the spec mounts it rprivate. CRIU binds the volume from the node and
// makes the bind a slave of the node's mount it came from, as the image
// says: mounts the node makes in the volume then appear in the clone. The
// previous build restored it so; the clone must cold-start, its /vol
// private.
func TestCraftedVolumeStaysPrivate(t *testing.T) {
	requireShim(t)
	volume := testDir(t)
	for _, args := range [][]string{{"--bind", volume, volume}, {"--make-shared", volume}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("umount", "--recursive", "--lazy", volume).Run() })
	sub := filepath.Join(volume, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--mount", "type=bind,src=" + volume + ",dst=/vol,options=rbind:rprivate:rw"}
	donor, donorLog := startScriptClone(t, "", counterScript, flags...)
	waitCount(t, donorLog, 5)
	if p := propagationAt(t, taskPID(t, donor), "/vol"); p != "" {
		t.Fatalf("the donor's /vol is %q, want private", p)
	}
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:shared-volume", packOptions{tamper: func(t *testing.T, dir string) {
		slaveMount(t, dir, "/vol")
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, counterScript, flags...)
	waitCount(t, cloneLog, 3) // restored or cold-started
	pid := taskPID(t, clone)
	if p := propagationAt(t, pid, "/vol"); p != "" {
		t.Errorf("the clone's /vol is %q, the node's volume %q; the spec mounts it rprivate", p, propagationAt(t, os.Getpid(), volume))
	}
	// A mount the node makes in the volume stays out of the clone.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "node-mount", sub).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs at %s: %v: %s", sub, err, out)
	}
	if hasMount(t, pid, "/vol/sub") {
		t.Errorf("the node's mount at %s appeared in the clone at /vol/sub", sub)
	}
	expectSpecFallback(t, offset, clone, cloneLog, "/vol is a slave (of peer group 1000) of the node's mounts, which the spec's propagation of /vol does not allow")
}

// slaveMount makes the mount at the mount point at in the images of dir a
// slave of a peer group of no mount of the images: CRIU takes it for the
// group of the node's mount it binds.
func slaveMount(t *testing.T, dir, at string) {
	t.Helper()
	done := false
	editImages(t, dir, "mountpoints-*.img", &mnt.MntEntry{}, func(img *crit.CriuImage) {
		for _, e := range img.Entries {
			if m := e.Message.(*mnt.MntEntry); m.GetMountpoint() == at {
				m.MasterId = proto.Uint32(1000)
				done = true
			}
		}
	})
	if !done {
		t.Fatalf("no mount at %s in the donor's mount tree", at)
	}
}

// hasMount reports whether process pid's mount namespace has a mount at at.
func hasMount(t *testing.T, pid int, at string) bool {
	t.Helper()
	_, ok := mountinfoAt(t, pid, at)
	return ok
}

// propagationAt returns the propagation fields (shared:N, master:N) of the
// mount at at in the mount namespace of process pid: empty for a private
// mount.
func propagationAt(t *testing.T, pid int, at string) string {
	t.Helper()
	p, ok := mountinfoAt(t, pid, at)
	if !ok {
		t.Fatalf("no mount at %s in process %d's mount namespace", at, pid)
	}
	return p
}

// mountinfoAt returns the propagation fields of the mount at at in process
// pid's mount namespace, and whether there is one.
func mountinfoAt(t *testing.T, pid int, at string) (string, bool) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options [optional fields...] - type source super
		f := strings.Fields(line)
		if len(f) < 7 || f[4] != at {
			continue
		}
		var out []string
		for _, o := range f[6:] {
			if o == "-" {
				break
			}
			out = append(out, o)
		}
		return strings.Join(out, " "), true
	}
	return "", false
}

// TestCraftedTmpfsIsNoViewOfAVolume restores a checkpoint whose /run
// tmpfs was edited to have the device of a read-only volume, a tmpfs of
// the node's (as a Kubernetes emptyDir in memory is), and the volume's
// entry the /run tmpfs's options: CRIU takes the two for views of one file
// system and binds /run from the volume, writable, instead of mounting a
// tmpfs. The previous build restored it so, the node's volume at /run; the
// clone must cold-start.
func TestCraftedTmpfsIsNoViewOfAVolume(t *testing.T) {
	requireShim(t)
	volume := testDir(t)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "node-volume", volume).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs at %s: %v: %s", volume, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "--lazy", volume).Run() })
	if err := os.WriteFile(filepath.Join(volume, "marker"), []byte("the node's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--mount", "type=bind,src=" + volume + ",dst=/data,options=rbind:ro"}
	donor, donorLog := startScriptClone(t, "", counterScript, flags...)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:run-alias", packOptions{tamper: func(t *testing.T, dir string) {
		aliasMount(t, dir, "/run", "/data")
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, counterScript, flags...)
	waitCount(t, cloneLog, 3) // restored or cold-started
	run := fmt.Sprintf("/proc/%d/root/run", taskPID(t, clone))
	if _, err := os.Stat(filepath.Join(run, "marker")); err == nil {
		t.Errorf("the clone's /run is the node's volume %s", volume)
	}
	// What the clone writes in /run stays out of the read-only volume.
	_ = os.WriteFile(filepath.Join(run, "written"), []byte("the clone's\n"), 0o644)
	if _, err := os.Stat(filepath.Join(volume, "written")); err == nil {
		t.Errorf("a file written in the clone's /run is in the node's read-only volume %s", volume)
	}
	expectSpecFallback(t, offset, clone, cloneLog, "/run has the device of /data")
}

// aliasMount gives the mount at at in the images of dir the device of the
// mount at of, and that one its options.
func aliasMount(t *testing.T, dir, at, of string) {
	t.Helper()
	editImages(t, dir, "mountpoints-*.img", &mnt.MntEntry{}, func(img *crit.CriuImage) {
		var target, source *mnt.MntEntry
		for _, e := range img.Entries {
			switch m := e.Message.(*mnt.MntEntry); m.GetMountpoint() {
			case at:
				target = m
			case of:
				source = m
			}
		}
		if target == nil || source == nil {
			t.Fatalf("no mounts at %s and %s in the donor's mount tree", at, of)
		}
		target.RootDev, source.Options = proto.Uint32(source.GetRootDev()), proto.String(target.GetOptions())
	})
}

// TestCraftedMaskIsNoViewOfSysfs restores a checkpoint whose /sys/firmware
// mask (an empty read-only tmpfs) was edited to have the device and
// options of the clone's sysfs, as was the /dev/null bound over
// /proc/keys: CRIU groups mounts with an external one by device and
// options alone, and binds the mask from the fresh sysfs instead of
// mounting a tmpfs, so /sys/firmware shows the whole of sysfs. The
// previous build restored it so; the clone must cold-start.
func TestCraftedMaskIsNoViewOfSysfs(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:mask-alias", packOptions{tamper: func(t *testing.T, dir string) {
		editImages(t, dir, "mountpoints-*.img", &mnt.MntEntry{}, func(img *crit.CriuImage) {
			var sys *mnt.MntEntry
			for _, e := range img.Entries {
				if m := e.Message.(*mnt.MntEntry); m.GetMountpoint() == "/sys" {
					sys = m
				}
			}
			var rest, keys []*crit.CriuEntry
			for _, e := range img.Entries {
				switch m := e.Message.(*mnt.MntEntry); m.GetMountpoint() {
				case "/sys/firmware", "/proc/keys":
					m.RootDev, m.Options = proto.Uint32(sys.GetRootDev()), proto.String(sys.GetOptions())
					if m.GetMountpoint() == "/proc/keys" {
						keys = append(keys, e)
						continue
					}
				}
				rest = append(rest, e)
			}
			if sys == nil || len(keys) != 1 {
				t.Fatal("no /sys or /proc/keys mask in the donor's mount tree")
			}
			img.Entries = append(rest, keys...) // last: CRIU reads the list backwards
		})
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startCounterClone(t, ck.Ref)
	waitCount(t, cloneLog, 3) // restored or cold-started
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/sys/firmware/kernel", taskPID(t, clone))); err == nil {
		t.Errorf("the clone's /sys/firmware mask shows the whole of sysfs")
	}
	expectSpecFallback(t, offset, clone, cloneLog, "from which CRIU could bind it")
}
