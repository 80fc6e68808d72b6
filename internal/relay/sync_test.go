package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

func TestSyncPolicy_ParsesTheFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    SyncPolicy
		wantErr string
	}{
		{in: "", want: SyncPolicy{}},
		{in: "always", want: SyncPolicy{Always: true}},
		{in: "1s", want: SyncPolicy{Interval: time.Second}},
		{in: "250ms", want: SyncPolicy{Interval: 250 * time.Millisecond}},
		{in: "0s", wantErr: "positive"},
		{in: "-1s", wantErr: "positive"},
		{in: "Always", wantErr: `"always" or a duration`},
		{in: "soon", wantErr: `"always" or a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := SyncPolicy{Interval: time.Hour}
			err := got.Set(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Set(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			var again SyncPolicy
			if err := again.Set(got.String()); err != nil || again != got {
				t.Fatalf("String() = %q does not parse back: %+v, %v", got.String(), again, err)
			}
		})
	}
}

func TestOpenQueue_EmbeddedServerSyncsAsConfigured(t *testing.T) {
	tests := []struct {
		name   string
		policy SyncPolicy
		check  func(always bool, interval time.Duration) bool
	}{
		{"default keeps JetStream's interval", SyncPolicy{}, func(a bool, i time.Duration) bool { return !a && i == 2*time.Minute }},
		{"always", SyncPolicy{Always: true}, func(a bool, _ time.Duration) bool { return a }},
		{"interval", SyncPolicy{Interval: time.Second}, func(a bool, i time.Duration) bool { return !a && i == time.Second }},
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
	cfg.Sync = SyncPolicy{Always: true}
	_, err := OpenQueue(context.Background(), cfg, logr.Discard())
	if err == nil || !strings.Contains(err.Error(), "--sync-interval") {
		t.Fatalf("OpenQueue = %v, want an error naming --sync-interval", err)
	}
}
