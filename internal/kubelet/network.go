package kubelet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
)

// network is the node's CNI network: the first conflist in the config
// directory, reloaded when its content changes, as containerd does.
type network struct {
	confDir, binDir, cacheDir string

	mu   sync.Mutex
	conf []byte
	rt   *cniruntime.Runtime
}

var errNoConfig = errors.New("no CNI configuration installed yet")

func (n *network) runtime() (*cniruntime.Runtime, error) {
	files, _ := filepath.Glob(filepath.Join(n.confDir, "*.conflist"))
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("%w in %s", errNoConfig, n.confDir)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rt == nil || !bytes.Equal(data, n.conf) {
		rt, err := cniruntime.New("", []string{n.binDir}, n.cacheDir, data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", files[0], err)
		}
		n.rt, n.conf = rt, data
	}
	return n.rt, nil
}

// ready is nil when pods can be networked: a conflist exists and its plugins
// answer STATUS.
func (n *network) ready(ctx context.Context) error {
	rt, err := n.runtime()
	if err != nil {
		return err
	}
	return rt.Status(ctx)
}
