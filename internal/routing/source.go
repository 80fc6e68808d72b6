package routing

import (
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
)

// publisher is the part FileSource and KubernetesSource share: it keeps the last good
// routes and hands each new, different one to OnChange.
type publisher struct {
	// mu serialises publish, so OnChange is never called concurrently and never sees
	// an older table after a newer one.
	mu      sync.Mutex
	current atomic.Pointer[Routes]
}

// publish records routes and calls onChange unless they are the same as the current
// ones.
func (p *publisher) publish(routes *Routes, onChange func(*Routes), log logr.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if routes.sameAs(p.current.Load()) {
		log.V(1).Info("routing table reloaded unchanged", "revision", routes.Revision)
		return
	}
	kv := []any{"revision", routes.Revision, "routes", routes.Len()}
	if previous := p.current.Swap(routes); previous != nil {
		kv = append(kv, "previousRevision", previous.Revision)
	}
	log.Info("routing table loaded", kv...)
	for _, err := range routes.Rejected() {
		log.Error(err, "subscription left out of the routing table")
	}
	if onChange != nil {
		onChange(routes)
	}
}
