package shim

import (
	"context"
	"sync"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/shim"
)

// filteringPublisher forwards the runc task service's events to containerd,
// except the TaskDelete/TaskCreate pair that a fallback produces internally:
// containerd asked for one Start and must see one task, not a task deleted
// and created again behind its back.
type filteringPublisher struct {
	shim.Publisher

	mu   sync.Mutex
	drop map[string]int // "<topic-kind>/<container id>" -> events still to drop
}

func newFilteringPublisher(p shim.Publisher) *filteringPublisher {
	return &filteringPublisher{Publisher: p, drop: map[string]int{}}
}

func eventKey(event events.Event) (string, bool) {
	switch e := event.(type) {
	case *eventstypes.TaskDelete:
		return "delete/" + e.ContainerID, true
	case *eventstypes.TaskCreate:
		return "create/" + e.ContainerID, true
	}
	return "", false
}

// suppressRecreate drops the next TaskDelete and TaskCreate of one container.
func (p *filteringPublisher) suppressRecreate(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop["delete/"+id]++
	p.drop["create/"+id]++
}

// cancelSuppress undoes suppressRecreate for events that were never sent.
func (p *filteringPublisher) cancelSuppress(id string, kinds ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range kinds {
		key := k + "/" + id
		if p.drop[key] > 0 {
			p.drop[key]--
		}
		if p.drop[key] == 0 {
			delete(p.drop, key)
		}
	}
}

func (p *filteringPublisher) Publish(ctx context.Context, topic string, event events.Event) error {
	if key, ok := eventKey(event); ok {
		p.mu.Lock()
		if p.drop[key] > 0 {
			p.drop[key]--
			if p.drop[key] == 0 {
				delete(p.drop, key)
			}
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()
	}
	return p.Publisher.Publish(ctx, topic, event)
}
