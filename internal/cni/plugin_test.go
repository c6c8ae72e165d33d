package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet-io/flatnet/internal/ipam"
)

// IPAM failures carry the spec's code where it has one, and the message of
// a corrupt store names the file.
func TestIPAMErrorCodes(t *testing.T) {
	corrupt := &ipam.CorruptError{Path: "/var/lib/cni/flatnet/n/state.1", Reason: "header damaged"}
	for _, tc := range []struct {
		name string
		err  error
		code uint
		msg  string
	}{
		{"exhausted", &ipam.ExhaustedError{}, ErrRangeExhausted, "no IP addresses available"},
		{"conflict", &ipam.ConflictError{Addr: netip.MustParseAddr("10.0.0.5"), Reason: "is reserved"}, ErrAddressConflict, "10.0.0.5"},
		{"owner the store cannot record", fmt.Errorf("wrapped: %w", ipam.Owner{ContainerID: "a b", IfName: "eth0"}.Validate()), types.ErrInvalidEnvironmentVariables, "containerID contains whitespace"},
		{"corrupt store", fmt.Errorf("wrapped: %w", corrupt), types.ErrIOFailure, corrupt.Path},
		{"corrupt store joined with another error", errors.Join(errors.New("netlink"), corrupt), types.ErrIOFailure, corrupt.Path},
		{"other store failure", errors.New("lock IPAM store: EIO"), types.ErrIOFailure, "op"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *types.Error
			if err := ipamError("op", tc.err); !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("ipamError(%v) = %v, want code %d with %q in the message", tc.err, err, tc.code, tc.msg)
			}
		})
	}
}
