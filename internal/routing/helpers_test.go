package routing

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// validSub returns a subscription that passes validation, for cases to break one field of.
func validSub(id string) Subscription {
	return Subscription{
		ID:     id,
		URL:    "https://crm.example.com/hooks/involveo",
		Events: []string{"task.published"},
		APIKey: Secret{Value: "k-123"},
	}
}

// bigTable builds n subscriptions with a realistic mix of patterns: exact types, the
// "task.*" wildcard, "*", and types of another family, each with a credential key and a
// header, like the manager renders for n WebhookSubscriptions.
func bigTable(n int) *Table {
	patterns := [][]string{
		{"task.published", "task.status_changed"},
		{"task.created"},
		{"task.*"},
		{"comment.created", "comment.deleted"},
		{"task.deleted", "task.*"},
		{"*"},
		{"task.published"},
		{"comment.*"},
		{"task.status_changed"},
		{"task.created", "task.deleted"},
	}
	t := &Table{Revision: "", Subscriptions: make([]Subscription, n)}
	for i := range n {
		ns, name := fmt.Sprintf("tenant-%04d", i/3), fmt.Sprintf("hook-%d", i)
		id := ns + "/" + name
		key := ns + "." + name
		t.Subscriptions[i] = Subscription{
			ID:         id,
			Generation: int64(1 + i%7),
			URL:        fmt.Sprintf("https://hooks-%d.%s.example.com/involveo/%x", i, ns, i*7919),
			Events:     patterns[i%len(patterns)],
			APIKey:     Secret{SecretKey: key + ".api-key"},
			Headers:    []Header{{Name: "X-Tenant", Value: ns}, {Name: "Authorization", SecretKey: key + ".authorization"}},
			Timeout:    NewDuration(time.Duration(10+i%20) * time.Second),
		}
	}
	return t
}

// credentialsFor makes up a value for every secretKey in t.
func credentialsFor(t *Table) map[string][]byte {
	creds := map[string][]byte{}
	for _, s := range t.Subscriptions {
		if s.APIKey.SecretKey != "" {
			creds[s.APIKey.SecretKey] = []byte("key-of-" + s.ID)
		}
		for _, h := range s.Headers {
			if h.SecretKey != "" {
				creds[h.SecretKey] = []byte("Bearer token-of-" + s.ID)
			}
		}
	}
	return creds
}

func mustContain(t *testing.T, got string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(got, want) {
			t.Errorf("%q\ndoes not contain %q", got, want)
		}
	}
}

// eventually bounds every wait for an asynchronous reload. A reload normally lands
// within the 100ms debounce or one watch event; five seconds absorbs a loaded CI machine
// without letting a broken watch hang the suite.
const eventually = 5 * time.Second

// captureLog returns a logger whose lines can be awaited, so tests synchronise on "the
// source has reacted" rather than on sleeps.
func captureLog() (logr.Logger, <-chan string) {
	lines := make(chan string, 1000)
	log := funcr.New(func(prefix, args string) {
		select {
		case lines <- args:
		default:
		}
	}, funcr.Options{Verbosity: 1})
	return log, lines
}

// waitLog returns the first line containing want.
func waitLog(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	timeout := time.After(eventually)
	for {
		select {
		case line := <-lines:
			if strings.Contains(line, want) {
				return line
			}
		case <-timeout:
			t.Fatalf("no log line containing %q within %v", want, eventually)
		}
	}
}

func nextRoutes(t *testing.T, changes <-chan *Routes) *Routes {
	t.Helper()
	select {
	case r := <-changes:
		return r
	case <-time.After(eventually):
		t.Fatalf("no routes loaded within %v", eventually)
		return nil
	}
}

func noPendingRoutes(t *testing.T, changes <-chan *Routes) {
	t.Helper()
	select {
	case r := <-changes:
		t.Fatalf("unexpected load of revision %s", r.Revision)
	default:
	}
}

// start runs a source until the test ends and waits for it to return, so no goroutine
// outlives the test.
func start(t *testing.T, run func(context.Context) error) {
	done := make(chan error, 1)
	go func() { done <- run(t.Context()) }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
}
