package kubelet

import (
	"context"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// status computes the pod's status from what the worker knows.
func (w *podWorker) status() corev1.PodStatus {
	old := w.pod.Status
	st := corev1.PodStatus{
		Phase:    corev1.PodPending,
		HostIP:   w.k.cfg.NodeIPs[0],
		HostIPs:  w.k.hostIPs(),
		QOSClass: old.QOSClass,
	}
	if !w.startTime.IsZero() {
		st.StartTime = &w.startTime
	}
	if w.sandbox != nil {
		st.PodIPs = w.sandbox.podIPs()
		if len(st.PodIPs) > 0 {
			st.PodIP = st.PodIPs[0].IP
		}
	}
	if w.failure != nil {
		st.Phase, st.Reason, st.Message = corev1.PodFailed, w.failure.reason, w.failure.message
	} else if w.sandboxErr != nil {
		st.Message = "pod sandbox: " + w.sandboxErr.Error()
	}

	initsDone, allReady := w.containerStatuses(&st)
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}
		if ok {
			c.Status = corev1.ConditionTrue
		}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == c.Status {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	// A terminating pod keeps the readiness its probes give, as upstream does:
	// the EndpointSlice controller then lists it as serving and terminating.
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, w.sandbox != nil),
		cond(corev1.PodInitialized, initsDone),
		cond(corev1.ContainersReady, allReady),
		cond(corev1.PodReady, allReady),
		cond(corev1.PodScheduled, true),
	}
	return st
}

// containerStatuses fills the container statuses of st and, unless the
// pod has failed, its phase from them; it reports whether every init
// container succeeded and every container is ready.
func (w *podWorker) containerStatuses(st *corev1.PodStatus) (initsDone, allReady bool) {
	initsDone = true
	for _, c := range w.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, c.status())
		initsDone = initsDone && c.succeeded()
	}
	allReady, anyRunning, allExited, allSucceeded := len(w.containers) > 0, false, len(w.containers) > 0, true
	for _, c := range w.containers {
		cs := c.status()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		anyRunning = anyRunning || cs.State.Running != nil
		terminated := cs.State.Terminated != nil && !w.willRestart(c)
		allExited = allExited && terminated
		allSucceeded = allSucceeded && terminated && cs.State.Terminated.ExitCode == 0
	}
	if w.failure == nil {
		switch {
		case allExited && allSucceeded:
			st.Phase = corev1.PodSucceeded
		case allExited:
			st.Phase = corev1.PodFailed
		case anyRunning || w.anyStarted():
			st.Phase = corev1.PodRunning
		}
	}
	return initsDone, allReady
}

func (w *podWorker) anyStarted() bool {
	for _, c := range w.containers {
		c.mu.Lock()
		s := c.exited || c.running
		c.mu.Unlock()
		if s {
			return true
		}
	}
	return false
}

func (w *podWorker) willRestart(c *container) bool {
	c.mu.Lock()
	code := c.exitCode
	c.mu.Unlock()
	switch w.pod.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return w.terminating.IsZero()
}

func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "flatnet-lab://" + c.spec.Image,
		Ready: c.ready && c.running, RestartCount: c.restarts, Started: &c.running}
	switch {
	case c.running:
		cs.ContainerID = "flatnet-lab://" + strconv.Itoa(c.cmd.Process.Pid)
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
	case c.exited:
		reason := "Completed"
		if c.exitCode != 0 {
			reason = "Error"
		}
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: int32(c.exitCode), Reason: reason, StartedAt: c.started, FinishedAt: c.finished}
	default:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	return cs
}

// postStatus sends the status when it differs from what was last sent.
func (w *podWorker) postStatus(ctx context.Context) {
	st := w.status()
	if w.lastStatus != nil && equality.Semantic.DeepEqual(*w.lastStatus, st) {
		return
	}
	pod := w.pod.DeepCopy()
	pod.Status = st
	if _, err := w.k.client.CoreV1().Pods(w.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		if ctx.Err() == nil {
			w.k.log.Debug("update pod status", "pod", w.ns+"/"+w.name, "err", err)
		}
		return
	}
	w.lastStatus = &st
}
