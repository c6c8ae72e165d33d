// Package ipam is flatnet-cni's built-in address allocator: it hands out one
// address per range set to each attachment (containerID, ifname) and keeps
// the allocations in a crash-safe store on the node's disk.
//
// Design notes (what is on disk, and why it survives a crash):
//
//   - One directory per network (default /var/lib/cni/flatnet/<network>).
//     Plugin processes run concurrently (a runtime may start many pods at once),
//     so every operation runs under flock(2) on <dir>/lock. The kernel drops
//     the lock when its holder dies, so a killed plugin never wedges the node.
//   - Every record is a symlink whose target is its content. symlink(2)
//     creates name and content in one step, so a crash leaves a record whole
//     or absent: there is no half-written file to repair, no fsync dance, and
//     `ls -l` shows the whole state to an operator.
//   - ips/<addr> -> "<containerID>:<ifname>" is the claim: creating it with
//     O_EXCL semantics (symlink fails on EEXIST) is the allocation.
//   - owners/<containerID>:<ifname>:<set> -> <addr> indexes claims by owner,
//     so a repeated ADD, a DEL and CHECK find an attachment's address in O(1)
//     instead of scanning every claim.
//   - Ordering keeps the index a superset of the claims: ADD writes the index
//     entry before the claim, DEL removes the claim before the index entry.
//     After a crash there may be an index entry without a claim (a repeated
//     ADD completes the claim and gets the same address; DEL or GC drops the
//     entry), but never a claim without an index entry, so no address can leak
//     past the next ADD, DEL or GC of its owner.
//   - last/<set> -> <addr> is a round-robin cursor: allocation continues after
//     the last address handed out, as host-local does, so a just-released
//     address is not immediately reused (stale ARP and conntrack entries of the
//     old pod have time to expire).
//   - Nothing is fsynced. After a machine crash every pod network namespace is
//     gone too; the runtime then re-ADDs or GCs with the attachments it knows,
//     and GC releases every claim not among them, including any record the
//     crash truncated.
//
// The gateway, the IPv4 network and broadcast addresses and any configured
// reserved address are never handed out.
package ipam
