// Package natstest starts a JetStream cluster inside the test process, for
// the tests and benchmarks that run the relay against an external,
// replicated JetStream (--nats-url) rather than its embedded server.
package natstest

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

const (
	// readyTimeout bounds each node's start.
	readyTimeout = 10 * time.Second
	// startAttempts is how many sets of ports StartCluster tries.
	startAttempts = 3
	// formTimeout bounds the election of a JetStream meta leader that sees
	// every node; a loaded machine takes seconds.
	formTimeout = 30 * time.Second
	// pollInterval is how often the cluster's state is checked while forming.
	pollInterval = 50 * time.Millisecond
)

// Cluster is n nats-servers with JetStream, routed to each other, listening
// on 127.0.0.1. Nodes are exposed so that a test can shut one down
// (Nodes[i].Shutdown()) or ask who leads what.
type Cluster struct {
	Nodes []*server.Server
}

// StartCluster starts n nodes with their file stores under dir and returns
// once JetStream has a meta leader that sees all n. The nodes stop at the
// test's cleanup.
func StartCluster(tb testing.TB, n int, dir string) *Cluster {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		c, err := tryStart(tb, n, filepath.Join(dir, fmt.Sprintf("attempt-%d", attempt)))
		if err == nil {
			c.waitFormed(tb)
			return c
		}
		c.shutdown()
		if attempt == startAttempts {
			tb.Fatal(err)
		}
		tb.Logf("%v; trying other ports", err)
	}
}

// tryStart starts the nodes and waits until they take connections. A node
// that never does most likely lost its cluster port, chosen free before the
// start, to another listener or an outgoing connection meanwhile; the caller
// tries again with other ports.
func tryStart(tb testing.TB, n int, dir string) (*Cluster, error) {
	routes := routeURLs(tb, n)
	c := &Cluster{}
	for i := range n {
		c.Nodes = append(c.Nodes, startNode(tb, fmt.Sprintf("nats-%d", i), dir, routes, i))
	}
	for _, srv := range c.Nodes {
		if !srv.ReadyForConnections(readyTimeout) {
			return c, fmt.Errorf("%s not ready for connections after %s (client listener %v, cluster listener %v)",
				srv.Name(), readyTimeout, srv.Addr(), srv.ClusterAddr())
		}
	}
	return c, nil
}

// waitFormed waits for a JetStream meta leader that sees every node.
func (c *Cluster) waitFormed(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(formTimeout)
	for !c.formed() {
		if time.Now().After(deadline) {
			tb.Fatalf("no JetStream meta leader seeing all %d nodes after %s", len(c.Nodes), formTimeout)
		}
		time.Sleep(pollInterval)
	}
}

func (c *Cluster) shutdown() {
	for _, srv := range c.Nodes {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// routeURLs picks the cluster ports before any node starts: every node's
// routes must list them all, since JetStream sizes its meta group from the
// configured routes and refuses clustering without any.
func routeURLs(tb testing.TB, n int) []string {
	tb.Helper()
	urls := make([]string, n)
	for i := range urls {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		urls[i] = "nats://" + ln.Addr().String()
		ln.Close()
	}
	return urls
}

// startNode starts node i, whose cluster port is the one in routes[i].
func startNode(tb testing.TB, name, dir string, routes []string, i int) *server.Server {
	tb.Helper()
	addr, err := net.ResolveTCPAddr("tcp", strings.TrimPrefix(routes[i], "nats://"))
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   filepath.Join(dir, name),
		Cluster:    server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: addr.Port},
		Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Start()
	tb.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

// formed reports whether every node is current with a meta leader that
// counts all of them as peers.
func (c *Cluster) formed() bool {
	for _, srv := range c.Nodes {
		if !srv.JetStreamIsCurrent() {
			return false
		}
	}
	for _, srv := range c.Nodes {
		if srv.JetStreamIsLeader() {
			return len(srv.JetStreamClusterPeers()) == len(c.Nodes)
		}
	}
	return false
}

// ClientURLs is the comma-separated client URLs of the nodes still running,
// as a NATS client (or the relay's --nats-url) takes them.
func (c *Cluster) ClientURLs() string {
	var urls []string
	for _, n := range c.Nodes {
		if n.Running() {
			urls = append(urls, n.ClientURL())
		}
	}
	return strings.Join(urls, ",")
}
