package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/involveo/webhook-operator/internal/syncpolicy"
)

func TestOpenQueue_EmbeddedServerSyncsAsConfigured(t *testing.T) {
	tests := []struct {
		name   string
		policy syncpolicy.Policy
		check  func(always bool, interval time.Duration) bool
	}{
		{"default keeps JetStream's interval", syncpolicy.Policy{}, func(a bool, i time.Duration) bool { return !a && i == 2*time.Minute }},
		{"always", syncpolicy.Policy{Always: true}, func(a bool, _ time.Duration) bool { return a }},
		{"interval", syncpolicy.Policy{Interval: time.Second}, func(a bool, i time.Duration) bool { return !a && i == time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig().Queue
			cfg.DataDir = t.TempDir()
			cfg.EventsMaxBytes, cfg.DeliveriesMaxBytes, cfg.DeadLettersMaxBytes = 64<<20, 64<<20, 16<<20
			cfg.Sync = tt.policy
			q, err := OpenQueue(context.Background(), cfg, logr.Discard())
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			js := q.server.JetStreamConfig()
			if !tt.check(js.SyncAlways, js.SyncInterval) {
				t.Fatalf("embedded JetStream syncs always=%v every %s", js.SyncAlways, js.SyncInterval)
			}
		})
	}
}

func TestOpenQueue_SyncIntervalNeedsTheEmbeddedServer(t *testing.T) {
	cfg := DefaultConfig().Queue
	cfg.NATSURL = "nats://127.0.0.1:1"
	cfg.Sync = syncpolicy.Policy{Always: true}
	_, err := OpenQueue(context.Background(), cfg, logr.Discard())
	if err == nil || !strings.Contains(err.Error(), "--sync-interval") {
		t.Fatalf("OpenQueue = %v, want an error naming --sync-interval", err)
	}
}
