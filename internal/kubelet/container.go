package kubelet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/nsexec"
	"github.com/flatnet-io/flatnet/internal/workload"
)

// container is one process of a pod and its history.
type container struct {
	spec corev1.Container
	argv []string
	init bool

	mu        sync.Mutex
	cmd       *exec.Cmd
	running   bool
	started   metav1.Time
	finished  metav1.Time
	exitCode  int
	exited    bool // has run and ended at least once
	restarts  int32
	nextStart time.Time

	ready           bool
	probeSuccesses  int
	probeFailures   int
	livenessFails   int
	nextProbe       time.Time
	nextLiveness    time.Time
	probeInProgress bool
}

// resolveContainers maps every container's image and command to a program;
// one that has none fails the pod with the reason.
func (w *podWorker) resolveContainers() {
	w.inits, w.containers = nil, nil
	for i, list := range [][]corev1.Container{w.pod.Spec.InitContainers, w.pod.Spec.Containers} {
		for _, c := range list {
			argv, err := workload.Resolve(w.k.cfg.Self, c.Image, c.Command, c.Args)
			if err != nil {
				w.failure = &podFailure{reason: "UnsupportedImage", message: fmt.Sprintf("container %s: %v", c.Name, err)}
				w.k.log.Warn("pod cannot run", "pod", w.ns+"/"+w.name, "reason", w.failure.message)
				return
			}
			ct := &container{spec: c, argv: argv, init: i == 0}
			if i == 0 {
				w.inits = append(w.inits, ct)
			} else {
				w.containers = append(w.containers, ct)
			}
		}
	}
}

// runContainers runs init containers one after another, then starts the
// app containers and restarts them per the pod's restartPolicy.
func (w *podWorker) runContainers(ctx context.Context) {
	for _, c := range w.inits {
		if c.succeeded() {
			continue
		}
		if !c.isRunning() && w.mayRestart(c) {
			w.start(c)
		}
		return // the next init container waits for this one
	}
	for _, c := range w.containers {
		if !c.isRunning() && w.mayRestart(c) {
			w.start(c)
		}
	}
}

func (c *container) isRunning() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

func (c *container) succeeded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exited && !c.running && c.exitCode == 0
}

// mayRestart applies restartPolicy and the crash-loop back-off.
func (w *podWorker) mayRestart(c *container) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.exited {
		return true
	}
	policy := w.pod.Spec.RestartPolicy
	if c.init && policy == corev1.RestartPolicyAlways {
		policy = corev1.RestartPolicyOnFailure // init containers run to completion
	}
	switch {
	case policy == corev1.RestartPolicyNever:
		return false
	case policy == corev1.RestartPolicyOnFailure && c.exitCode == 0:
		return false
	}
	return time.Now().After(c.nextStart)
}

// start launches the container's process inside the pod's namespace.
func (w *podWorker) start(c *container) {
	dir := w.k.podDir(w.uid)
	_ = os.MkdirAll(dir, 0o755)
	logf, err := os.OpenFile(filepath.Join(dir, c.spec.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		w.k.log.Warn("container log", "err", err)
		return
	}
	defer logf.Close()
	var cmd *exec.Cmd
	if w.sandbox.nsPath == "" {
		cmd = exec.Command(c.argv[0], c.argv[1:]...)
	} else {
		cmd = nsexec.Command(w.sandbox.nsPath, c.argv[0], c.argv[1:]...)
	}
	cmd.Env = w.env(c)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	if c.spec.WorkingDir != "" {
		cmd.Dir = c.spec.WorkingDir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: 0}
	c.mu.Lock()
	if c.exited {
		c.restarts++
	}
	c.ready, c.probeSuccesses, c.probeFailures, c.livenessFails = false, 0, 0, 0
	c.nextProbe, c.nextLiveness = time.Time{}, time.Time{}
	if err := cmd.Start(); err != nil {
		c.exited, c.exitCode, c.finished = true, 128, metav1.Now()
		c.nextStart = time.Now().Add(backoff(c.restarts))
		c.mu.Unlock()
		w.k.log.Warn("start container", "pod", w.ns+"/"+w.name, "container", c.spec.Name, "err", err)
		return
	}
	c.cmd, c.running, c.started = cmd, true, metav1.Now()
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
			if code < 0 {
				code = 137 // killed by a signal
			}
		}
		c.mu.Lock()
		c.running, c.exited, c.exitCode, c.finished = false, true, code, metav1.Now()
		c.ready = false
		c.nextStart = time.Now().Add(backoff(c.restarts))
		c.mu.Unlock()
		w.notify()
	}()
}

// backoff is the crash-loop delay: 1 s doubling up to 30 s (the lab keeps it
// short; a real kubelet goes to 5 min).
func backoff(restarts int32) time.Duration {
	d := time.Second << min(restarts, 5)
	return min(d, 30*time.Second)
}

// signal sends SIGTERM, or SIGKILL, to the container's process group.
func (c *container) signal(kill bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running || c.cmd == nil || c.cmd.Process == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, sig)
}

// env is the container's environment: its own variables (with the downward
// API fields a lab supports) and the pod's identity for built-in programs.
func (w *podWorker) env(c *container) []string {
	podIP := ""
	if len(w.sandbox.ips) > 0 {
		podIP = w.sandbox.ips[0]
	}
	field := map[string]string{
		"metadata.name": w.name, "metadata.namespace": w.ns, "metadata.uid": string(w.uid),
		"spec.nodeName": w.k.cfg.NodeName, "spec.serviceAccountName": w.pod.Spec.ServiceAccountName,
		"status.podIP": podIP, "status.hostIP": w.k.cfg.NodeIPs[0],
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOSTNAME=" + w.name,
		workload.EnvPodName + "=" + w.name, workload.EnvPodNamespace + "=" + w.ns, workload.EnvPodIP + "=" + podIP}
	for _, e := range c.spec.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = field[e.ValueFrom.FieldRef.FieldPath]
		}
		env = append(env, e.Name+"="+v)
	}
	return env
}
