package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// nft runs the nft command (in this thread's namespace) and returns stdout.
func nft(args ...string) (string, error) {
	cmd := exec.Command("nft", args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

func nftVersion() string {
	out, err := nft("--version")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(out)
}

// verify reads the table back with `nft -j list table` and fails unless it
// holds exactly the expected ruleset: N map elements, chainsPer*N Service
// chains (+2 fixed), the right number of rules, and every Service's DNAT
// targets those of its latest generation (updated, 0 if absent). It
// returns the table's text listing, normalized for comparing the libraries.
func verify(table string, sh shape, svcs []service, updated map[int]int) (string, error) {
	out, err := nft("-j", "list", "table", "ip", table)
	if err != nil {
		return "", err
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return "", fmt.Errorf("parse nft -j output: %w", err)
	}
	chains, rules, elems := 0, 0, -1
	svcChains := 0
	dnats := map[string][]string{} // chain -> DNAT addresses, in order
	for _, obj := range doc.Nftables {
		switch {
		case obj["chain"] != nil:
			var c struct{ Name string }
			if err := json.Unmarshal(obj["chain"], &c); err != nil {
				return "", err
			}
			chains++
			if strings.HasPrefix(c.Name, "svc-") || strings.HasPrefix(c.Name, "ep-") {
				svcChains++
			}
		case obj["map"] != nil:
			var m struct {
				Name string
				Elem []json.RawMessage
			}
			if err := json.Unmarshal(obj["map"], &m); err != nil {
				return "", err
			}
			if m.Name == serviceIPsMap {
				elems = len(m.Elem)
			}
		case obj["rule"] != nil:
			var r struct {
				Chain string
				Expr  []map[string]json.RawMessage
			}
			if err := json.Unmarshal(obj["rule"], &r); err != nil {
				return "", err
			}
			rules++
			for _, e := range r.Expr {
				if e["dnat"] != nil {
					var d struct {
						Addr string
						Port int
					}
					if err := json.Unmarshal(e["dnat"], &d); err != nil {
						return "", err
					}
					dnats[r.Chain] = append(dnats[r.Chain], fmt.Sprintf("%s:%d", d.Addr, d.Port))
				}
			}
		}
	}
	n := len(svcs)
	rulesPer := 0
	for _, c := range svcs[0].chains(sh, 0) {
		rulesPer += len(c.rules)
	}
	if elems != n || svcChains != sh.chainsPer()*n || chains != svcChains+2 || rules != rulesPer*n+2 {
		return "", fmt.Errorf("table ip %s: %d elements in %s, %d Service chains, %d chains, %d rules; want %d, %d, %d, %d",
			table, elems, serviceIPsMap, svcChains, chains, rules, n, sh.chainsPer()*n, sh.chainsPer()*n+2, rulesPer*n+2)
	}
	for _, s := range svcs {
		for _, c := range s.chains(sh, updated[s.i]) {
			var want []string
			for _, r := range c.rules {
				if r.dnatTo.IsValid() {
					want = append(want, fmt.Sprintf("%s:%d", r.dnatTo, targetPort))
				}
			}
			if !slices.Equal(dnats[c.name], want) {
				return "", fmt.Errorf("table ip %s, chain %s: DNAT to %v, want %v", table, c.name, dnats[c.name], want)
			}
		}
	}
	text, err := nft("list", "table", "ip", table)
	if err != nil {
		return "", err
	}
	return normalize(text, table), nil
}

// normalize makes two tables' listings comparable: the table name goes, and
// the map's elements, which nft prints in the kernel's hash order, are
// sorted. Everything else (chains, rules, their order) stays as listed.
func normalize(listing, table string) string {
	var out, elems []string
	inElems := false
	for _, line := range strings.Split(listing, "\n") {
		line = strings.TrimSpace(strings.Replace(line, "table ip "+table+" ", "table ip T ", 1))
		if rest, ok := strings.CutPrefix(line, "elements = {"); ok {
			inElems, line = true, rest
		}
		if !inElems {
			out = append(out, line)
			continue
		}
		last := strings.HasSuffix(line, "}")
		line = strings.TrimSuffix(line, "}")
		for _, e := range strings.Split(line, ",") {
			if e = strings.TrimSpace(e); e != "" {
				elems = append(elems, e)
			}
		}
		if last {
			slices.Sort(elems)
			out = append(out, "elements = {")
			out = append(out, elems...)
			out = append(out, "}")
			inElems, elems = false, nil
		}
	}
	return strings.Join(out, "\n")
}

// firstDiff shows where two normalized listings part.
func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < max(len(la), len(lb)); i++ {
		if i >= len(la) || i >= len(lb) || la[i] != lb[i] {
			lo, hi := max(0, i-3), i+4
			return fmt.Sprintf("knftables (lines %d-):\n%s\ngoogle/nftables:\n%s", lo+1,
				strings.Join(la[lo:min(hi, len(la))], "\n"), strings.Join(lb[lo:min(hi, len(lb))], "\n"))
		}
	}
	return "(same)"
}
