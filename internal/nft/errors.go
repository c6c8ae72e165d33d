package nft

import (
	"errors"
	"fmt"
	"syscall"

	"sigs.k8s.io/knftables"
)

// Error is a transaction the kernel refused: the errno, the refused
// operation written as nft would write it, and, when the operation is one
// of several elements sent together, the refused element. The kernel
// applied nothing of the transaction.
type Error struct {
	Errno   syscall.Errno // ENOENT, EEXIST, ...
	Command string        // the refused operation, in nft syntax
	Object  string        // the refused element of Command, or ""
	Reason  string        // the kernel's extended report, if it gave one
}

func (e *Error) Error() string {
	cmd := e.Command
	if len(cmd) > 160 {
		cmd = cmd[:160] + " ..."
	}
	msg := e.Errno.Error()
	if e.Reason != "" {
		msg += " (" + e.Reason + ")"
	}
	if e.Object != "" {
		return fmt.Sprintf("the kernel refused %s in %q: %s", e.Object, cmd, msg)
	}
	return fmt.Sprintf("the kernel refused %q: %s", cmd, msg)
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
