package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Down removes everything lab name made: processes, namespaces (and with
// them every link), state. Running it on a lab that is gone is fine.
func Down(stateRoot, name string, out io.Writer) error {
	l, err := NewLayout(stateRoot, name, 0)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces)")
	}
	if _, err := os.Stat(l.Path(stateFile)); err == nil { // a lab's directory, not some other
		unlock, err := lock(l)
		if err != nil {
			return err
		}
		defer unlock()
	}
	procs := NewProcesses(l)
	step(out, "stopping %d processes of lab %q", len(procs.all()), name)
	procs.stopAll(5 * time.Second)
	if left := procs.all(); len(left) > 0 {
		return fmt.Errorf("processes of the lab survive SIGKILL: %v", left)
	}
	names, err := l.Namespaces()
	errs := []error{err}
	for _, n := range names {
		errs = append(errs, netns.Delete(n))
	}
	step(out, "removed %d network namespaces %s*", len(names), l.Prefix())
	step(out, "removing %s", l.Dir)
	errs = append(errs, removeState(l))
	return errors.Join(errs...)
}
