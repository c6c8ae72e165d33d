package agent

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
)

// eventSink sends flatnetd's Events (source component "flatnetd", host this
// node): address conflicts on Services from the proxies, node-sync
// failures on the Node. A node-sync failure is sent once per distinct
// error, not once per retry.
type eventSink struct {
	record.EventRecorder
	broadcaster record.EventBroadcaster
	node        *corev1.ObjectReference

	mu      sync.Mutex
	lastErr string
}

func newEventSink(ctx context.Context, client *apiClient, nodeName string) *eventSink {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(apiEventSink{client.core})
	return &eventSink{
		EventRecorder: b.NewRecorder(apiScheme, corev1.EventSource{Component: "flatnetd", Host: nodeName}),
		broadcaster:   b,
		// Node Events name the node by its name as UID, as the kubelet's do.
		node: &corev1.ObjectReference{Kind: "Node", Name: nodeName, UID: types.UID(nodeName), APIVersion: "v1"},
	}
}

func (e *eventSink) shutdown() { e.broadcaster.Shutdown() }

func (e *eventSink) nodeSyncFailed(err error) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if msg := err.Error(); msg != e.lastErr {
		e.lastErr = msg
		e.Eventf(e.node, corev1.EventTypeWarning, "NodeSyncFailed", "flatnetd: %s (retrying)", msg)
	}
}

func (e *eventSink) nodeSyncOK() {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastErr = ""
}
