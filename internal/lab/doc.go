// Package lab is `flatnet lab`: a whole Kubernetes cluster network on one
// machine. It runs the real upstream control plane (flatnet-controlplane,
// built from Kubernetes v1.37.2), makes each node a network namespace on a
// lab underlay, and runs a lab kubelet and flatnetd per node.
//
// Design notes (the state a lab leaves on the machine while it is up):
//
//   - Network namespaces, all named fn-<lab>-*: "switch" holds the underlay
//     bridge br0 and is also the "outside" host (172.30.0.1, fd00:30::1);
//     "cp" holds etcd, kube-apiserver, kube-controller-manager and
//     kube-scheduler (172.30.0.2, fd00:30::2); "node-N" is node N
//     (172.30.0.(10+N), fd00:30::(10+N)) with its flatnetd, its lab kubelet
//     and, inside, the node bridge made by flatnet-cni; pod namespaces are
//     fn-<lab>-node-N-p-<pod UID>. Each host has a veth to br0, an address of each
//     family (IPv6 ones without DAD: nothing else can hold them) and a
//     default route of each family via the outside host. Nothing is added to
//     the machine's own namespace but one loopback listener, the API
//     forwarder for kubectl.
//   - Processes, started detached (own session), their logs in
//     <state>/logs/<component>.log and pids in <state>/pids/. Every one of
//     them carries FLATNET_LAB_PROCESS=<its pid file> in its environment,
//     and either runs in a lab namespace or names the state directory on its
//     command line, which is how `lab down` finds them all, even orphans,
//     and how `lab up` finds one whose pid file it never wrote.
//   - `lab up` and `lab down` hold a lock (flock on <state>/lock); every
//     step of `lab up` checks the whole desired state of what it makes and
//     completes it, and files are replaced atomically, so an up killed at
//     any point is finished by the next.
//   - Files under <state> (default /var/lib/flatnet/labs/<lab>): PKI,
//     kubeconfigs, etcd data, per-node CNI config, IPAM store and result cache.
//
// `lab down` kills the processes, deletes the namespaces (which removes every
// veth and bridge in them) and the state directory; it is safe to run twice.
// Since it runs as root and removes by name, a lab name is a DNS label of at
// most MaxNameLen characters, checked before any command does anything; the
// state root must be absolute, every path made from a name is verified to
// stay below it, and a directory without lab.json is never removed.
//
// Files by concern: name.go, Layout: the names and paths of one lab, a value
// that creates nothing; topology.go, the address plan and the underlay it
// wires; process.go, Processes: starting, finding and stopping the lab's
// processes; pki.go and kubeconfig.go, the certificates and keys and the
// kubeconfigs made from them; controlplane.go, the command lines of the
// control plane and of each node's flatnetd and lab kubelet; forward.go,
// the API forwarder on the machine's loopback; files.go, the state
// directory: the atomic writer every state file (lab.json, pid files,
// certificates, kubeconfigs) goes through, the lock and lab.json itself;
// up.go, down.go, status.go, traffic.go and rbac.go, the commands.
package lab
