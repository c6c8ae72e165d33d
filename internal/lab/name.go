package lab

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// MaxNameLen bounds a lab's name. No interface name is made from it (the
// switch ports are named after their host, "cp" and "node-N", links inside
// a namespace have fixed names, and pod veths are hashes), so IFNAMSIZ does
// not bind it. Namespace names do: the longest, fn-<lab>-node-244-p-<36-
// character pod UID>, is a file name in /run/netns (NAME_MAX 255, so at
// most 204).
// So would a Unix socket under <default state root>/<lab>/nodes/node-N/
// (sun_path is 108 bytes: about 56 for a short socket name). 32 fits both
// with room, and is a valid DNS label, so the name may also appear in
// Kubernetes objects.
const MaxNameLen = 32

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// ValidateName reports why name cannot name a lab: it must be a DNS-label
// style name of at most MaxNameLen characters. Every path and namespace of
// the lab derives from it, so this is checked before anything else.
func ValidateName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("lab name %q is longer than %d characters", name, MaxNameLen)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab name %q must be lower-case letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// validateStateRoot requires an absolute path that is not the filesystem
// root: `lab down` removes directories below it.
func validateStateRoot(root string) error {
	if !filepath.IsAbs(root) || filepath.Clean(root) == "/" {
		return fmt.Errorf("state root %q must be an absolute path below /", root)
	}
	return nil
}

// under joins elems below root and verifies that the result stays strictly
// inside root: each element must be one plain path component (no
// separator, no "." or "..", not empty). Every path built from a name goes
// through it.
func under(root string, elems ...string) (string, error) {
	if len(elems) == 0 {
		return "", errors.New("no path below " + root)
	}
	for _, e := range elems {
		if e == "" || e == "." || e == ".." || strings.ContainsAny(e, "/\x00") {
			return "", fmt.Errorf("%q is not a file name below %s", e, root)
		}
	}
	p := filepath.Join(append([]string{root}, elems...)...)
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("%s is not below %s", p, root)
	}
	return p, nil
}
