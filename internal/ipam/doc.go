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
//   - Two slots, state.0 and state.1. Generation g always goes to slot
//     (g-1) mod 2, so a save overwrites the slot that does not hold the
//     newest committed state. A slot is one fixed-size header line
//     ("flatnet-ipam v2 <intent|commit> <generation> <body length> <body
//     CRC-32> <header CRC-32>") and the records. A save takes three steps,
//     each fsynced before the next starts: (1) an intent header for g+1,
//     which marks the slot's old content superseded; (2) the body; (3) the
//     commit header. The header is one 73-byte write at offset 0, inside one
//     page and one disk sector, so a kill or a power cut leaves the old
//     header or the new one, never a mix; only the body can be torn.
//   - So a load can always tell a crash from damage. A crash leaves, beside
//     the newest committed slot (generation g), either generation g-1, or
//     nothing (only beside generation 1), or an intent for g+1 whatever its
//     body: that write never returned, and the load uses g. Anything else -
//     a commit header over a body failing its checksum, a damaged header, a
//     generation in the wrong slot or not adjacent to the other - is an
//     error (*CorruptError naming the file), never an older state: falling
//     back silently would hand the newest claims out a second time. The one
//     store that starts empty despite a written file is a torn very first
//     write (state.0 an intent for generation 1, or a part of one followed
//     by zeros, and state.1 empty): no generation was ever committed, so
//     nothing can be lost; it logs a warning.
//   - Saves fsync the slot; creating the directory or a file fsyncs the
//     directory holding the new entry. The files are made once and rewritten
//     in place: creating inodes (files, symlinks) costs ~0.8 ms each on this
//     project's reference disk, which would dominate ADD; the three fsyncs of
//     a save cost ~0.2 ms each on the test VM's ext4.
//   - Every record read back is checked as it was before writing
//     (Owner.Validate, one address per owner and range set): the store never
//     writes what it cannot read. v1 slots (earlier releases: "generation N",
//     records, "end <CRC-32>") are read as before and turned into v2 by the
//     next two saves; a v1 slot failing its checksum is an error, since v1
//     cannot tell a torn write from damage.
//   - The cursor makes allocation continue after the last address handed out,
//     as host-local does, so a just-released address is not reused at once
//     (stale ARP and conntrack entries of the old pod have time to expire).
//   - A corrupt store refuses every operation (STATUS reports it). Recovery
//     is an operator's decision: the files are text, so the damage can be
//     read; with no pod of the network left on the node (drained), removing
//     state.0 and state.1 starts the store empty. After a machine crash the
//     runtime re-ADDs or GCs with the attachments it knows, and GC releases
//     every claim not among them.
//
// The gateway, the IPv4 network and broadcast addresses and any configured
// reserved address are never handed out.
package ipam
