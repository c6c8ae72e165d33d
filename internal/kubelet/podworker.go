package kubelet

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podWorker owns one pod on this node from its first event to its removal:
// every change to the pod goes through its reconcile loop, so nothing about a
// pod is ever done concurrently.
type podWorker struct {
	k    *Kubelet
	uid  types.UID
	ns   string
	name string
	wake chan struct{}

	pod        *corev1.Pod
	sandbox    *sandbox
	sandboxErr error
	inits      []*container
	containers []*container
	startTime  metav1.Time
	failure    *podFailure // the pod cannot run at all (unknown program)

	terminating time.Time // when termination began; zero while running
	killAt      time.Time // SIGKILL after this
	lastStatus  *corev1.PodStatus
}

type podFailure struct{ reason, message string }

func newPodWorker(k *Kubelet, pod *corev1.Pod) *podWorker {
	return &podWorker{k: k, uid: pod.UID, ns: pod.Namespace, name: pod.Name, pod: pod, wake: make(chan struct{}, 1)}
}

func (w *podWorker) notify() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *podWorker) run(ctx context.Context) {
	t := time.NewTicker(syncPeriod)
	defer t.Stop()
	for {
		if done := w.reconcile(ctx); done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-t.C:
		}
	}
}

// reconcile moves the pod one step toward what its object says; it reports
// true when the pod is gone and the worker can end.
func (w *podWorker) reconcile(ctx context.Context) bool {
	pod, exists := w.k.lister(w.uid)
	if !exists {
		// Deleted without a grace period (or by force): stop at once.
		w.killAll(0)
		w.teardown(ctx)
		return true
	}
	w.pod = pod
	log := w.k.log.With("pod", w.ns+"/"+w.name)

	if pod.DeletionTimestamp != nil {
		return w.terminate(ctx)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		w.teardown(ctx) // finished pods keep their object but not their network
		return false
	}
	if w.failure == nil && w.sandbox == nil {
		w.resolveContainers()
	}
	if w.failure == nil {
		if err := w.ensureSandbox(ctx); err != nil {
			if !errors.Is(err, w.sandboxErr) {
				log.Warn("pod sandbox", "err", err)
			}
			w.sandboxErr = err
		} else {
			w.sandboxErr = nil
			if w.startTime.IsZero() {
				w.startTime = metav1.Now()
			}
			w.runContainers(ctx)
			w.probe(ctx)
		}
	}
	w.postStatus(ctx)
	return false
}

// terminate runs the grace period: SIGTERM first, SIGKILL when it ends, then
// the network is torn down and the Pod object removed.
func (w *podWorker) terminate(ctx context.Context) bool {
	if w.terminating.IsZero() {
		grace := int64(30)
		if w.pod.Spec.TerminationGracePeriodSeconds != nil {
			grace = *w.pod.Spec.TerminationGracePeriodSeconds
		}
		if w.pod.DeletionGracePeriodSeconds != nil && *w.pod.DeletionGracePeriodSeconds < grace {
			grace = *w.pod.DeletionGracePeriodSeconds
		}
		w.terminating = time.Now()
		w.killAt = w.terminating.Add(time.Duration(grace) * time.Second)
		w.k.log.Info("terminating pod", "pod", w.ns+"/"+w.name, "grace", grace)
		w.signalAll(false)
	}
	if w.anyRunning() && time.Now().Before(w.killAt) {
		w.probe(ctx) // endpoints of a terminating pod still report readiness
		w.postStatus(ctx)
		return false
	}
	w.killAll(2 * time.Second)
	w.teardown(ctx)
	err := w.k.client.CoreV1().Pods(w.ns).Delete(ctx, w.name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64),
		Preconditions:      &metav1.Preconditions{UID: &w.uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.k.log.Warn("delete pod", "pod", w.ns+"/"+w.name, "err", err)
		return false
	}
	return true
}

func (w *podWorker) allContainers() []*container {
	return append(append([]*container{}, w.inits...), w.containers...)
}

func (w *podWorker) anyRunning() bool {
	for _, c := range w.allContainers() {
		if c.isRunning() {
			return true
		}
	}
	return false
}

// signalAll sends SIGTERM (or SIGKILL) to every container.
func (w *podWorker) signalAll(kill bool) {
	for _, c := range w.allContainers() {
		c.signal(kill)
	}
}

// killAll sends SIGKILL and waits up to wait for the processes to be reaped.
func (w *podWorker) killAll(wait time.Duration) {
	w.signalAll(true)
	deadline := time.Now().Add(wait)
	for w.anyRunning() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// teardown removes the pod's network: CNI DEL, then the namespace.
func (w *podWorker) teardown(ctx context.Context) {
	if w.sandbox == nil && !w.sandboxExists() {
		return
	}
	w.killAll(2 * time.Second)
	if err := w.deleteSandbox(ctx); err != nil {
		w.k.log.Warn("delete pod sandbox", "pod", w.ns+"/"+w.name, "err", err)
		return
	}
	w.sandbox = nil
}
