package relay

import (
	"strings"
	"testing"
	"time"
)

func TestConfig_ValidateNamesTheFlag(t *testing.T) {
	tests := []struct {
		name     string
		change   func(*Config)
		wantFlag string
	}{
		{"no workers", func(c *Config) { c.Workers = 0 }, "--workers"},
		{"no in-flight cap", func(c *Config) { c.MaxInFlightPerSubscription = 0 }, "--max-in-flight-per-subscription"},
		{"no replicas", func(c *Config) { c.Replicas = 0 }, "--replicas"},
		{"no pending set", func(c *Config) { c.Queue.MaxAckPending = 0 }, "--max-ack-pending"},
		{"no ack wait", func(c *Config) { c.Queue.DeliverAckWait = 0 }, "--deliver-ack-wait"},
		{"sub-second ack wait", func(c *Config) { c.Queue.DeliverAckWait = 500 * time.Millisecond }, "--deliver-ack-wait"},
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.change(&cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.wantFlag) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.wantFlag)
			}
		})
	}
}
