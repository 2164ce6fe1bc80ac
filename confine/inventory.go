package confine

import (
	"fmt"
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
