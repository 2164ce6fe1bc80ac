package confine

import (
	"fmt"
	"math/bits"

	sknetlink "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-netlink"
	"golang.org/x/sys/unix"
)

// Netlink protocols and groups whose rules differ from the kernel's
// default (uapi linux/netlink.h, linux/rtnetlink.h, linux/genetlink.h).
const (
	rtnlgrpIPv4MrouteR = 30 // RTNLGRP_IPV4_MROUTE_R
	rtnlgrpIPv6MrouteR = 31 // RTNLGRP_IPV6_MROUTE_R
	genlCtrlNotify     = 16 // the generic netlink controller's "notify" group (GENL_ID_CTRL)
	netlinkConnected   = 1  // NETLINK_CONNECTED, the state of a connected socket
)

// netlink checks a netlink socket as CRIU restores it: it binds the
// socket to the first 32 multicast groups of the image and, if the socket
// was connected, connects it to the image's destination, as root, in the
// task, before the task gets its own credentials. The cold start's
// process would have been refused (EPERM) where the kernel asks for a
// capability, so such a socket needs that capability in the spec:
//   - joining a group: free for the protocols the kernel lets any user
//     listen to (route, sock_diag, SELinux, kobject uevents, generic
//     netlink), except route's multicast-routing groups (30 and 31) and
//     generic netlink's groups other than its controller's, which may be
//     any family's, some of them privileged (drop_monitor's events take
//     CAP_SYS_ADMIN, psample's packets CAP_NET_ADMIN: both are asked);
//     audit's take CAP_AUDIT_READ on the node; every other protocol's
//     CAP_NET_ADMIN;
//   - a connected socket: free for NETLINK_USERSOCK only, CAP_NET_ADMIN
//     otherwise (the kernel lets anyone connect to the kernel itself, port
//     0 and no group, but CRIU never connects so: below).
//
// A socket connected without a group is refused whatever the spec: CRIU
// connects it to group 1<<(dst_group-1), which for dst_group 0 is group
// 32 on x86 and arm64 (the shift's count wraps). The clone's sends would
// go to that group's listeners too (RTNLGRP_NEXTHOP for a route socket),
// which the donor's did not; seen on this node's CRIU 4.2 by dumping the
// clone again.
//
// CAP_NET_ADMIN counts in the container's network namespace, as the
// kernel asks it in the socket's (netnsOf keeps every socket there).
func (c *fileChecks) netlink(sk *sknetlink.NetlinkSkEntry) error {
	proto := sk.GetProtocol()
	if n := len(sk.GetGroups()); n > 1 {
		// CRIU fails on them; refused before they are counted.
		return fmt.Errorf("the checkpoint holds a %s socket with %d words of groups; CRIU restores the first 32 groups only", netlinkName(proto), n)
	}
	for _, g := range netlinkGroups(sk.GetGroups()) {
		if err := c.netlinkGroup(proto, g); err != nil {
			return err
		}
	}
	if sk.GetState() == netlinkConnected {
		switch g := sk.GetDstGroup(); {
		case g == 0:
			return fmt.Errorf("the checkpoint holds a %s socket connected to port %d without a group, which CRIU would connect to group 32", netlinkName(proto), sk.GetDstPortid())
		case g > 32:
			// The kernel records the first group of a 32-bit mask.
			return fmt.Errorf("the checkpoint holds a %s socket connected to group %d, which no socket can be", netlinkName(proto), g)
		}
		if proto != unix.NETLINK_USERSOCK {
			what := fmt.Sprintf("a %s socket connected to port %d, group %d", netlinkName(proto), sk.GetDstPortid(), sk.GetDstGroup())
			if err := c.need(unix.CAP_NET_ADMIN, true, what); err != nil {
				return err
			}
		}
	}
	return c.sockOpts(sk.GetOpts(), false)
}

func (c *fileChecks) netlinkGroup(proto uint32, group int) error {
	what := fmt.Sprintf("a %s socket in multicast group %d", netlinkName(proto), group)
	switch proto {
	case unix.NETLINK_ROUTE:
		if group == rtnlgrpIPv4MrouteR || group == rtnlgrpIPv6MrouteR {
			return c.need(unix.CAP_NET_ADMIN, true, what)
		}
		return nil
	case unix.NETLINK_SOCK_DIAG, unix.NETLINK_SELINUX, unix.NETLINK_KOBJECT_UEVENT:
		return nil
	case unix.NETLINK_GENERIC:
		if group == genlCtrlNotify {
			return nil
		}
		if err := c.need(unix.CAP_NET_ADMIN, true, what); err != nil {
			return err
		}
		return c.need(unix.CAP_SYS_ADMIN, true, what)
	case unix.NETLINK_AUDIT:
		return c.need(unix.CAP_AUDIT_READ, false, what)
	}
	return c.need(unix.CAP_NET_ADMIN, true, what)
}

// netlinkGroups lists the groups (numbered from 1) of a socket's group
// bitmap, in CRIU's 32-bit words.
func netlinkGroups(words []uint32) []int {
	var groups []int
	for i, w := range words {
		for w != 0 {
			b := bits.TrailingZeros32(w)
			groups = append(groups, 32*i+b+1)
			w &^= 1 << b
		}
	}
	return groups
}

// netlinkNames are the protocols' names in refusals.
var netlinkNames = map[uint32]string{
	unix.NETLINK_ROUTE: "NETLINK_ROUTE", unix.NETLINK_USERSOCK: "NETLINK_USERSOCK", unix.NETLINK_SOCK_DIAG: "NETLINK_SOCK_DIAG",
	unix.NETLINK_XFRM: "NETLINK_XFRM", unix.NETLINK_SELINUX: "NETLINK_SELINUX", unix.NETLINK_AUDIT: "NETLINK_AUDIT",
	unix.NETLINK_CONNECTOR: "NETLINK_CONNECTOR", unix.NETLINK_NETFILTER: "NETLINK_NETFILTER",
	unix.NETLINK_KOBJECT_UEVENT: "NETLINK_KOBJECT_UEVENT", unix.NETLINK_GENERIC: "NETLINK_GENERIC",
}

func netlinkName(proto uint32) string {
	if name, ok := netlinkNames[proto]; ok {
		return name
	}
	return fmt.Sprintf("netlink protocol %d", proto)
}
