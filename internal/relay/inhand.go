package relay

import (
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// inHand is the deliveries this relay holds outside the slots' parking: the
// ones running an attempt (rate-limit wait, request, storing its follow-up),
// those moved out of the way until JetStream has stored their copy, and the
// fetched ones not yet dispatched, including one whose dispatcher waits
// while the whole relay is full. reportProgress tells JetStream they are in
// progress, so --deliver-ack-wait only has to outlast a relay that stopped
// answering, not the longest attempt, and the work of a crashed relay goes
// to the others that much sooner.
type inHand struct {
	mu   sync.Mutex
	next uint64
	msgs map[uint64]jetstream.Msg
}

func newInHand() *inHand { return &inHand{msgs: map[uint64]jetstream.Msg{}} }

// hold adds msg until the returned release is called. The same message may be
// held twice (a dispatch starts its attempt): each hold is its own entry.
func (h *inHand) hold(msg jetstream.Msg) (release func()) {
	h.mu.Lock()
	id := h.next
	h.next++
	h.msgs[id] = msg
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.msgs, id)
		h.mu.Unlock()
	}
}

// all lists the messages held now.
func (h *inHand) all() []jetstream.Msg {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]jetstream.Msg, 0, len(h.msgs))
	for _, m := range h.msgs {
		out = append(out, m)
	}
	return out
}
