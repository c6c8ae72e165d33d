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
