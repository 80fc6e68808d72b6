package relay

import (
	"errors"
	"fmt"
	"time"
)

// SyncPolicy is how often the embedded JetStream forces what it stored to
// disk. JetStream writes every message to its file store before it answers,
// so what a 202 acknowledged survives the relay process crashing or being
// killed whatever the policy: the data is in the kernel's page cache. The
// policy decides what survives the machine itself failing (power loss, kernel
// panic, a node vanishing with a local volume that was not flushed): with the
// default interval, up to that interval of acknowledged events and
// delivery progress can be lost; with Always, nothing, at the throughput cost
// BenchmarkRelay_OneSubscriptionSyncAlways measures (`make bench`).
//
// The zero value keeps JetStream's default (two minutes).
type SyncPolicy struct {
	// Always flushes every write before it is acknowledged.
	Always bool
	// Interval flushes periodically; zero is JetStream's default.
	Interval time.Duration
}

const syncAlways = "always"

// String is the flag form: "always", a duration, or "" for the default.
func (p *SyncPolicy) String() string {
	switch {
	case p.Always:
		return syncAlways
	case p.Interval > 0:
		return p.Interval.String()
	default:
		return ""
	}
}

// Set parses the flag form, so a SyncPolicy is a flag.Value.
func (p *SyncPolicy) Set(s string) error {
	switch s {
	case "":
		*p = SyncPolicy{}
		return nil
	case syncAlways:
		*p = SyncPolicy{Always: true}
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want %q or a duration such as 1s: %w", syncAlways, err)
	}
	if d <= 0 {
		return errors.New("a sync interval must be positive")
	}
	*p = SyncPolicy{Interval: d}
	return nil
}
