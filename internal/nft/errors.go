package nft

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"sigs.k8s.io/knftables"
)

// Error is a transaction the kernel (or nft) refused, as nft reported it:
// the reason, the errno behind it when nft names one, the refused command
// and, where nft marks it, the very object in that command (an element, a
// chain name). The kernel applied nothing of the transaction.
type Error struct {
	Errno   syscall.Errno // ENOENT, EEXIST, ...; 0 when nft names none
	Reason  string        // e.g. "Could not process rule: File exists"
	Command string        // the refused command
	Object  string        // the part of Command nft marked, or ""
	Report  string        // nft's whole report
}

func (e *Error) Error() string {
	cmd := e.Command
	if len(cmd) > 120 {
		cmd = cmd[:120] + " ..."
	}
	if e.Object != "" {
		return fmt.Sprintf("nft refused %q in %q: %s", e.Object, cmd, e.Reason)
	}
	return fmt.Sprintf("nft refused %q: %s", cmd, e.Reason)
}

// IsNotFound reports whether err is a refusal for something missing (a
// table, chain, set or element), from the kernel or from knftables' Fake.
func IsNotFound(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Errno == syscall.ENOENT
	}
	return knftables.IsNotFound(err)
}

// IsAlreadyExists reports whether err is a refusal for something that
// exists (a map key with another value), from the kernel or knftables.
func IsAlreadyExists(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Errno == syscall.EEXIST
	}
	return knftables.IsAlreadyExists(err)
}

// nftLocation is the head of each error nft reports for input read from
// stdin: "/dev/stdin:<line>:<first column>-<last column>: Error: <reason>".
var nftLocation = regexp.MustCompile(`^/dev/stdin:\d+:(\d+)-(\d+): Error: (.*)$`)

var errnoNames = map[string]syscall.Errno{
	"No such file or directory":     syscall.ENOENT,
	"File exists":                   syscall.EEXIST,
	"Device or resource busy":       syscall.EBUSY,
	"Invalid argument":              syscall.EINVAL,
	"Numerical result out of range": syscall.ERANGE,
	"Operation not permitted":       syscall.EPERM,
}

// parseError reads nft's report of a failed `nft -f -`: the first error,
// the command under it and the columns it marks.
func parseError(report string) *Error {
	e := &Error{Report: report, Reason: strings.TrimSpace(report)}
	lines := strings.Split(report, "\n")
	for i, line := range lines {
		m := nftLocation.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		e.Reason = m[3]
		for name, errno := range errnoNames {
			if strings.HasSuffix(e.Reason, name) {
				e.Errno = errno
			}
		}
		if i+1 < len(lines) {
			e.Command = lines[i+1]
			first, _ := strconv.Atoi(m[1])
			last, _ := strconv.Atoi(m[2])
			if first >= 1 && last >= first && last <= len(e.Command) {
				e.Object = e.Command[first-1 : last]
			}
		}
		break
	}
	return e
}
