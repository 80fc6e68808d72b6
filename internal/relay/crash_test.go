package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildRelay compiles cmd/relay once per test binary.
var buildRelay = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "relay-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "relay")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/relay").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build cmd/relay: %v\n%s", err, out)
	}
	return bin, nil
})

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// relayProcess is cmd/relay running as a child process.
type relayProcess struct {
	cmd    *exec.Cmd
	ingest string
	admin  string
	exited chan struct{}
}

func startRelayProcess(t *testing.T, args ...string) *relayProcess {
	t.Helper()
	bin, err := buildRelay()
	if err != nil {
		t.Fatal(err)
	}
	p := &relayProcess{ingest: freeAddr(t), admin: freeAddr(t), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"--listen", p.ingest, "--admin-listen", p.admin}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = os.Stderr, os.Stderr
	if !testing.Verbose() {
		p.cmd.Stdout, p.cmd.Stderr = io.Discard, io.Discard
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.kill(syscall.SIGKILL) })
	eventually(t, 60*time.Second, "relay process ready", func() bool {
		select {
		case <-p.exited:
			t.Fatal("relay process exited during start-up")
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func (p *relayProcess) kill(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	<-p.exited
}

func (p *relayProcess) post(t *testing.T, body []byte) {
	t.Helper()
	resp, err := http.Post("http://"+p.ingest+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("post event: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("ingest answered %d: %s", resp.StatusCode, b)
	}
}

// crashSink answers 500 until told otherwise and records which numbered
// events it accepted with 200.
type crashSink struct {
	mu        sync.Mutex
	healthy   bool
	attempts  int
	delivered map[int]bool
}

func (s *crashSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev struct {
		Data struct{ N int } `json:"data"`
	}
	_ = json.NewDecoder(r.Body).Decode(&ev)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	if !s.healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	s.delivered[ev.Data.N] = true
}

func (s *crashSink) snapshot() (attempts, delivered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts, len(s.delivered)
}

func TestRelayProcess_SIGKILLWithPendingRetriesLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a relay process")
	}
	sink := &crashSink{delivered: map[int]bool{}}
	srv := httptest.NewServer(sink)
	defer srv.Close()
	dir := t.TempDir()
	routes := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(routes, []byte(table(routeYAML("ns/crm", srv.URL, `["*"]`,
		"    retry: {maxRetries: 3, interval: 2s}\n"))), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", routes, "--data-dir", filepath.Join(dir, "data"),
		"--allow-destination-cidrs", "127.0.0.0/8", "--deliver-ack-wait", "10s"}
	event := func(n int) []byte {
		return fmt.Appendf(nil, `{"event":"test.crash","timestamp":"2025-07-28T13:15:40.507707+00:00Z","data":{"n":%d}}`, n)
	}

	const failing, lastMinute = 30, 10
	p := startRelayProcess(t, args...)
	for n := range failing {
		p.post(t, event(n))
	}
	eventually(t, 30*time.Second, "every first attempt to fail", func() bool {
		attempts, _ := sink.snapshot()
		return attempts >= failing
	})
	// These are acknowledged but may not even be fanned out when the kill lands.
	for n := failing; n < failing+lastMinute; n++ {
		p.post(t, event(n))
	}
	p.kill(syscall.SIGKILL)

	sink.mu.Lock()
	sink.healthy = true
	sink.mu.Unlock()
	startRelayProcess(t, args...)
	eventually(t, 60*time.Second, "every acknowledged event delivered after the restart", func() bool {
		_, delivered := sink.snapshot()
		return delivered == failing+lastMinute
	})
}

func TestRelayProcess_HotReloadsTheRoutingFile(t *testing.T) {
	before, after := newEndpoint(t, http.StatusOK), newEndpoint(t, http.StatusOK)
	dir := t.TempDir()
	routes := filepath.Join(dir, "routes.yaml")
	write := func(url string) {
		tmp := routes + ".tmp"
		if err := os.WriteFile(tmp, []byte(table(routeYAML("ns/crm", url, `["*"]`, ""))), 0o600); err != nil {
			t.Fatal(err)
		}
		// Rename, as editors and ConfigMap volume updates do.
		if err := os.Rename(tmp, routes); err != nil {
			t.Fatal(err)
		}
	}
	write(before.URL)
	p := startRelayProcess(t, "--config", routes, "--data-dir", filepath.Join(dir, "data"),
		"--allow-destination-cidrs", "127.0.0.0/8")
	p.post(t, seedEvent(t, "task.created"))
	before.next(t, 10*time.Second)

	write(after.URL)
	eventually(t, 10*time.Second, "the new route to be used", func() bool {
		p.post(t, seedEvent(t, "task.created"))
		select {
		case <-after.got:
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
	select {
	case <-p.exited:
		t.Fatal("the relay restarted to reload")
	default:
	}
}
