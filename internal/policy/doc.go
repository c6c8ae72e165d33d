// Package policy enforces NetworkPolicy (networking.k8s.io/v1) for the
// pods of one node, with every verdict in the kernel: nftables sets keyed
// by concatenations, looked up by a fixed handful of rules, so the work
// per packet does not grow with the number of policies, pods or peers.
//
// The model (model.go, peers.go): for each policy, the pods of this node
// its podSelector picks are isolated for ingress, and for egress too when
// its policyTypes say so (unset: Egress only when it has egress rules).
// Each rule grants them peers on ports: the pods its selectors pick on
// every node (podSelector in the policy's namespace, namespaceSelector
// alone: every pod of those namespaces, both in one peer: AND; peers of a
// list: OR), ipBlocks but their excepts, every address when the list is
// empty; TCP, UDP or SCTP ports, a range to endPort, every port when none
// is given, every protocol when the rule lists no ports. A named port is
// resolved on the pod that receives the traffic: on each selected pod for
// ingress, on each peer pod for egress (so it reaches pods only); a named
// port no pod has grants nothing and still isolates. Grants of all
// policies are unioned. Pod addresses come from status.podIPs; pods on the
// host network and finished pods are neither selected nor peers.
//
// Design notes (kernel state): one table per family in use, "ip
// flatnet-policy" and "ip6 flatnet-policy", owned by this package alone:
//
//	set attachments: host veth . address of this node's pods, comment UID
//	chain forward (filter hook forward priority 0: after service DNAT in
//	               prerouting, so a packet to a ClusterIP is judged by the
//	               pod it reaches; before masquerade, so by its source)
//	  ct state established,related accept          replies of allowed flows
//	  icmpv6 type nd-neighbor-solicit|advert accept  (IPv6: untracked ND)
//	  ip saddr @egress-isolated jump egress
//	  ip daddr @ingress-isolated jump ingress
//	chain egress (ingress alike, with daddr . saddr)
//	  counter name ip saddr map @egress-new
//	  meta l4proto tcp ip saddr . ip daddr . th dport @egress-tcp return
//	  (udp, sctp alike)
//	  ip saddr . ip daddr @egress-any return
//	  ip saddr @egress-log limit rate 20/second log prefix "flatnet:egress" group 17998
//	  counter name ip saddr map @egress-denied drop
//	  counter drop
//
// The isolated sets hold this node's pod addresses; the others are
// interval sets of concatenations (the kernel's pipapo), pod . peer range
// [. port range], one element per range of peers and range of ports,
// made disjoint here (the kernel refuses overlapping intervals). A
// connection's first packet costs at most two lookups in hash sets, one
// in a hash map of counters and four in interval sets per direction (a
// dropped one two more hash lookups), whatever the number of policies;
// later packets, one conntrack match. The memory is one element
// per isolated pod of this node, range of peers and range of ports (pod
// addresses next to each other merge into one range), so a rule picking
// many scattered peers for many local pods is what grows. Only
// forwarded packets are judged: pods reach each other through the node
// (routed between nodes; bridged on one node, which the agent sends
// through the IP hooks with bridge-nf-call-iptables), so traffic the node
// itself originates (kubelet probes, host processes) never meets the
// chain, which is the API's "the pod's local node is always allowed"; and
// pod → its own node (the input hook) is not judged either. Each node
// judges egress of its own pods and ingress to its own pods; a flow
// between nodes is judged by both.
//
// Each sync writes one transaction: the difference from what the engine
// last committed (deletions before additions), or, first and after any
// failure, the whole table (declarations added, chains, sets and maps
// flushed and refilled in the same transaction, so there is never a
// moment without isolation; named counters of pods still isolated keep
// their counts, the others are deleted). The table is left in place when the agent exits: a restart
// keeps enforcing the last policies until the new agent, its caches
// synced, replaces the table atomically.
//
// Isolated from the first packet (admitter.go, attach.go): the CNI
// plugin asks the agent to admit a new pod's addresses before it makes
// the pod's interface, and the agent answers once both families' tables
// hold them; this node's attachments overlay the pods' statuses (which
// reach the API server only after the pod started) and are kept in set
// "attachments" (ifname . address, the pod's UID as comment), which a
// restarted agent reads back before its first commit. Admitter says why
// this leaves no window.
//
// Revocation (revoke.go): a commit that takes an allowance away deletes
// the conntrack entries of the flows of the pods concerned that the new
// model denies (Model.Allows, held to the tables by a test), so their
// next packet is judged as a new connection's and dropped; flatnetd does
// it unless --policy-revoke=false.
//
// Anti-spoofing (guard.go): table "bridge flatnet-antispoof" drops, at
// the bridge port a frame enters by, IPv4, IPv6 and ARP from an attached
// pod that does not carry one of its own addresses; the Guard writes it
// from the attachments, and an admission waits for it too.
//
// Verdicts you can see (verdicts.go): each direction's chain counts, per
// isolated pod, the first packets it judges and those it drops, in named
// counters found through maps keyed by the pod's address (an extra hash
// lookup per first packet of an isolated pod); the metrics add each
// pod's counts to the policies isolating it. Pods of namespaces
// annotated policy.flatnet.io/log: "deny" have their dropped first
// packets logged to nfnetlink_log group LogGroup, LogRate a second per
// direction.
//
// Not yet (later slices): counters per rule; ClusterNetworkPolicy; the
// target of IPv6 neighbour advertisements.
package policy
