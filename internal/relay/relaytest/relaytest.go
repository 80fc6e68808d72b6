// Package relaytest configures an in-process relay for other packages'
// integration tests: embedded JetStream in a folder of the test's, store
// limits small enough for any disk, loopback destinations allowed (test
// endpoints run on 127.0.0.1), and an AckWait a test can outlast.
package relaytest

import (
	"net/netip"
	"time"

	"github.com/go-logr/logr"

	"github.com/involveo/webhook-operator/internal/relay"
)

// Config starts from the production defaults and changes what a test on one
// machine needs.
func Config(dataDir string, log logr.Logger) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Workers = 16
	cfg.MaxInFlightPerSubscription = 4
	cfg.AllowDestinationCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Log = log
	q := &cfg.Queue
	q.DataDir = dataDir
	q.EventsMaxBytes, q.DeliveriesMaxBytes, q.DeadLettersMaxBytes = 64<<20, 64<<20, 64<<20
	q.EventsMaxAge, q.DeadLettersMaxAge = time.Hour, time.Hour
	q.DeliverAckWait = 30 * time.Second
	q.MaxAckPending = 1000
	return cfg
}
