// Package ipam is flatnet-cni's built-in address allocator: it hands out one
// address per range set to each attachment (containerID, ifname) and keeps
// the allocations in a crash-safe store on the node's disk.
//
// Design notes (what is on disk, and why it survives a crash):
//
//   - One directory per network (default /var/lib/cni/flatnet/<network>)
//     holding lock, state.0 and state.1. Plugin processes run concurrently (a
//     runtime may start many pods at once), so every operation runs under
//     flock(2) on lock; the kernel drops the lock when its holder dies, so a
//     killed plugin never wedges the node.
//   - The state (every claim "address, range set, containerID:ifname" and a
//     round-robin cursor per range set) is small text, rewritten whole by each
//     operation: one operation is one commit, so there is no ordering between
//     records to get wrong and no half-done allocation to recover.
//   - Two slots, each "generation N, records, CRC-32": a save writes the slot
//     that does not hold the newest valid state, a load takes the valid slot
//     with the higher generation. A writer killed mid-write leaves a slot that
//     fails its checksum, and the other slot still holds the previous state.
//     The files are made once and rewritten in place: creating inodes (files,
//     symlinks) costs ~0.8 ms each on this project's reference disk, which
//     would dominate ADD; rewriting an existing file costs microseconds.
//   - The cursor makes allocation continue after the last address handed out,
//     as host-local does, so a just-released address is not reused at once
//     (stale ARP and conntrack entries of the old pod have time to expire).
//   - Nothing is fsynced. After a machine crash every pod network namespace is
//     gone too; the runtime then re-ADDs or GCs with the attachments it knows,
//     and GC releases every claim not among them. Only if both slots are
//     damaged does the store refuse to work (STATUS reports it) rather than
//     risk handing out an address twice.
//
// The gateway, the IPv4 network and broadcast addresses and any configured
// reserved address are never handed out.
package ipam
