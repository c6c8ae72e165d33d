package deploy

import (
	"bufio"
	"bytes"
	"io"
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// needed is what flatnetd asks the API server for: its informers (list,
// watch), the Pod it looks up by name, the Node it reads, the Events it
// writes.
var needed = []struct {
	group, resource string
	verbs           []string
}{
	{"", "nodes", []string{"get", "list", "watch"}},
	{"", "services", []string{"list", "watch"}},
	{"discovery.k8s.io", "endpointslices", []string{"list", "watch"}},
	{"networking.k8s.io", "networkpolicies", []string{"list", "watch"}},
	{"", "pods", []string{"get", "list", "watch"}},
	{"", "namespaces", []string{"list", "watch"}},
	{"", "events", []string{"create", "patch", "update"}},
}

func clusterRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(RBAC)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			t.Fatal("rbac.yaml has no ClusterRole")
		}
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("rbac.yaml: %v", err)
		}
		if cr, ok := obj.(*rbacv1.ClusterRole); ok {
			return cr
		}
	}
}

// The ClusterRole grants flatnetd everything it asks for, and no wildcard.
func TestClusterRoleGrantsWhatFlatnetdAsks(t *testing.T) {
	cr := clusterRole(t)
	for _, n := range needed {
		for _, verb := range n.verbs {
			if !slices.ContainsFunc(cr.Rules, func(r rbacv1.PolicyRule) bool {
				return slices.Contains(r.APIGroups, n.group) && slices.Contains(r.Resources, n.resource) && slices.Contains(r.Verbs, verb)
			}) {
				t.Errorf("no rule grants %s %s (group %q)", verb, n.resource, n.group)
			}
		}
	}
	for _, r := range cr.Rules {
		for _, l := range [][]string{r.APIGroups, r.Resources, r.Verbs} {
			if slices.Contains(l, "*") {
				t.Errorf("a wildcard rule: %+v", r)
			}
		}
	}
}
