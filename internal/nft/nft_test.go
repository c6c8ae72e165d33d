package nft

import (
	"bytes"
	"testing"
)

func TestMergeElementAdds(t *testing.T) {
	in := `add chain ip t svc-a
add element ip t cluster-ips { 10.96.0.1 }
add element ip t cluster-ips { 10.96.0.2 }
add element ip t service-ips { 10.96.0.1 . tcp . 80 comment "ns/a/tcp" : goto svc-a }
add element ip t service-ips { 10.96.0.2 . udp . 53 comment "ns/b/udp/dns" : goto reject-chain }
delete element ip t hairpin { 10.244.0.1 . 10.244.0.1 }
add element ip t hairpin { 10.244.0.2 . 10.244.0.2 }
add element ip t cluster-ips { 10.96.0.3 }
add element ip t odd { 10.96.0.4 comment "x { y }" }
add element ip t odd { 10.96.0.5 comment "a \"b\"" }
add rule ip t svc-a dnat to 10.244.0.1:80
`
	want := `add chain ip t svc-a
add element ip t cluster-ips { 10.96.0.1, 10.96.0.2 }
add element ip t service-ips { 10.96.0.1 . tcp . 80 comment "ns/a/tcp" : goto svc-a, 10.96.0.2 . udp . 53 comment "ns/b/udp/dns" : goto reject-chain }
delete element ip t hairpin { 10.244.0.1 . 10.244.0.1 }
add element ip t hairpin { 10.244.0.2 . 10.244.0.2 }
add element ip t cluster-ips { 10.96.0.3 }
add element ip t odd { 10.96.0.4 comment "x { y }" }
add element ip t odd { 10.96.0.5 comment "a \"b\"" }
add rule ip t svc-a dnat to 10.244.0.1:80
`
	var got bytes.Buffer
	mergeElementAdds(&got, in)
	if got.String() != want {
		t.Fatalf("merged:\n%s\nwant:\n%s", got.String(), want)
	}
}

// nft's report of a refused transaction read into a typed error.
func TestParseError(t *testing.T) {
	report := "/dev/stdin:3:25-43: Error: Could not process rule: No such file or directory\n" +
		"delete element ip t m { 10.0.0.9 . tcp . 80 }\n" +
		"                        ^^^^^^^^^^^^^^^^^^^\n"
	e := parseError(report)
	if e.Errno != 2 || e.Object != "10.0.0.9 . tcp . 80" || e.Command != "delete element ip t m { 10.0.0.9 . tcp . 80 }" || !IsNotFound(e) {
		t.Fatalf("parsed %#v", e)
	}
	if e := parseError("nft: some failure without a location\n"); e.Errno != 0 || e.Reason != "nft: some failure without a location" || IsNotFound(e) {
		t.Fatalf("parsed %#v", e)
	}
}
