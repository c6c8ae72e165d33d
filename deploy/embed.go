// Package deploy holds the manifests that run flatnet in a cluster; the lab
// applies rbac.yaml from here so that what is tested is what is shipped.
package deploy

import _ "embed"

// RBAC is rbac.yaml: flatnetd's ServiceAccount, ClusterRole and binding.
//
//go:embed rbac.yaml
var RBAC []byte

// DaemonSet is daemonset.yaml.
//
//go:embed daemonset.yaml
var DaemonSet []byte
