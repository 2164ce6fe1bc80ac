package confine

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"google.golang.org/protobuf/encoding/protowire"
)

// dumpRunIDField is inventory_entry's dump_criu_run_id (CRIU 4), which
// go-criu v7 does not know: it comes among the unknown fields.
const dumpRunIDField protowire.Number = 13

// runID is the form of CRIU's run id: a UUID (util_init).
var runID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// checkInventory refuses an inventory.img whose dump_criu_run_id is not a
// run id as CRIU makes them: CRIU puts it into the nftables commands that
// lock and unlock the network around the restore ("create table inet
// CRIU-<id>"), which it runs as root in the container's network
// namespace, a pod's when the spec joins one: a crafted id could carry
// other commands (flush the pod's NAT rules, say).
// Without inventory.img CRIU does not restore at all.
func checkInventory(imagesDir string, names []string) error {
	if !slices.Contains(names, "inventory.img") {
		return nil
	}
	img, err := decodeOne(filepath.Join(imagesDir, "inventory.img"), &inventory.InventoryEntry{})
	if err != nil {
		return err
	}
	unknown := img.Entries[0].Message.(*inventory.InventoryEntry).ProtoReflect().GetUnknown()
	for len(unknown) > 0 {
		num, typ, n := protowire.ConsumeTag(unknown)
		if n < 0 {
			return fmt.Errorf("inventory.img: %w", protowire.ParseError(n))
		}
		unknown = unknown[n:]
		n = protowire.ConsumeFieldValue(num, typ, unknown)
		if n < 0 {
			return fmt.Errorf("inventory.img: %w", protowire.ParseError(n))
		}
		if num == dumpRunIDField {
			v, m := protowire.ConsumeBytes(unknown[:n])
			if typ != protowire.BytesType || m < 0 || !runID.Match(v) {
				return fmt.Errorf("inventory.img has a dump run id %q, not one CRIU makes; CRIU would put it into the commands it runs as root to lock the network", v)
			}
		}
		unknown = unknown[n:]
	}
	return nil
}

// checkDescriptors refuses a descriptors.json (runc's record of the
// container's stdio at the dump) with more than the three stdio entries:
// runc's restore makes each entry naming a pipe CRIU's inherited fd of
// that index, and CRIU's fd 3 is its RPC socket to runc, which the app
// would then hold (and could tell runc to run the spec's hooks again).
func checkDescriptors(imagesDir string, names []string) error {
	if !slices.Contains(names, "descriptors.json") {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(imagesDir, "descriptors.json"))
	if err != nil {
		return err
	}
	var fds []string
	if err := json.Unmarshal(data, &fds); err != nil {
		return fmt.Errorf("descriptors.json: %w", err)
	}
	if len(fds) > 3 {
		return fmt.Errorf("descriptors.json lists %d descriptors, want the 3 of stdio; runc would hand CRIU's own to the app", len(fds))
	}
	return nil
}
