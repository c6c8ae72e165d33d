package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flatnet-io/flatnet/internal/policy"
)

// runPolicy is `flatnet policy log`: the connections a node's policies
// denied lately, from its flatnetd, named by pods and policies.
func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "log" {
		fmt.Fprintln(stderr, "usage: flatnet policy log [--addr HOST:PORT] [--json]")
		return 2
	}
	fs := flag.NewFlagSet("policy log", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9465", "flatnetd's --health-addr on this node")
	asJSON := fs.Bool("json", false, "print the entries as JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	denials, err := fetchDenials(ctx, *addr)
	if err != nil {
		fmt.Fprintln(stderr, "flatnet policy log:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(denials)
		return 0
	}
	printDenials(stdout, denials)
	return 0
}

func fetchDenials(ctx context.Context, addr string) ([]policy.Denial, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/policy/log", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask flatnetd: %w (on a lab node: flatnet lab exec --node NODE -- flatnet policy log)", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("flatnetd answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var out []policy.Denial
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("read flatnetd's answer: %w", err)
	}
	return out, nil
}

// printDenials writes one line per denial: when, which way, the two ends
// (pod and address) and the policies that isolate the pod judged.
func printDenials(w io.Writer, ds []policy.Denial) {
	if len(ds) == 0 {
		fmt.Fprintln(w, "no denied connections logged (a namespace asks with the annotation "+policy.LogAnnotation+": deny)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tDIRECTION\tPROTOCOL\tFROM\tTO\tISOLATED BY")
	end := func(pod, addr string) string {
		if pod == "" {
			return addr
		}
		return pod + " (" + addr + ")"
	}
	for _, d := range ds {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Time.Local().Format("15:04:05.000"), d.Direction, d.Protocol,
			end(d.SrcPod, d.Src), end(d.DstPod, d.Dst), strings.Join(d.Policies, ", "))
	}
	_ = tw.Flush()
}
