// Package syncpolicy is the relay's --sync-interval: how often its embedded
// JetStream flushes to disk. The manager validates its own --relay-sync-interval
// with the same parser, so a typo is refused there instead of crash-looping
// the relay.
package syncpolicy

import (
	"errors"
	"fmt"
	"time"
)

// Policy is how often an embedded JetStream forces what it stored to
// disk. JetStream writes every message to its file store before it answers,
// so what a 202 acknowledged survives the relay process crashing or being
// killed whatever the policy: the data is in the kernel's page cache. The
// policy decides what survives the machine itself failing (power loss, kernel
// panic, a node vanishing with a local volume that was not flushed): with the
// default interval, up to that interval of acknowledged events and
// delivery progress can be lost; with Always, nothing, at the throughput cost
// BenchmarkRelay_OneSubscriptionSyncAlways in the relay package measures
// (`make bench`).
//
// The zero value keeps JetStream's default (two minutes).
type Policy struct {
	// Always flushes every write before it is acknowledged.
	Always bool
	// Interval flushes periodically; zero is JetStream's default.
	Interval time.Duration
}

const always = "always"

// String is the flag form: "always", a duration, or "" for the default.
func (p *Policy) String() string {
	switch {
	case p.Always:
		return always
	case p.Interval > 0:
		return p.Interval.String()
	default:
		return ""
	}
}

// Set parses the flag form, so a Policy is a flag.Value.
func (p *Policy) Set(s string) error {
	switch s {
	case "":
		*p = Policy{}
		return nil
	case always:
		*p = Policy{Always: true}
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want %q or a duration such as 1s: %w", always, err)
	}
	if d <= 0 {
		return errors.New("a sync interval must be positive")
	}
	*p = Policy{Interval: d}
	return nil
}
