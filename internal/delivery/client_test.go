package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// allowLoopback lets deliveries reach the httptest servers, which listen on 127.0.0.1.
var allowLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

// payload is what the Involveo producer really sends: Russian text and its timestamp
// with both an offset and a Z, which must arrive unchanged.
const payload = `{"event":"task.created","timestamp":"2025-07-28T13:15:40.507707+00:00Z",` +
	`"data":{"task":{"title":"Новая идея","content":"Добавьте тёмную тему","status":"new",` +
	`"tags":["интерфейс"],"time_create":"2025-07-28T13:15:40.507707+00:00Z","email":null},` +
	`"user":{"type":"internal","email":"ivan@example.com","name":"Иван","company":null,"custom_fields":{}}}}`

func newServer(t *testing.T, handler http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return srv
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func request(t *testing.T, rawURL string) Request {
	t.Helper()
	return Request{
		URL:        mustURL(t, rawURL),
		APIKey:     "k-123",
		EventType:  "task.created",
		DeliveryID: "d-42",
		Body:       []byte(payload),
		Timeout:    5 * time.Second,
	}
}

func TestClient_DeliverSendsTheContractRequest(t *testing.T) {
	tests := []struct {
		name        string
		headers     []Header
		wantHeaders map[string][]string
	}{
		{
			name:    "sends the contract's headers, the extra headers and the relay's User-Agent",
			headers: []Header{{Name: "X-Tenant", Value: "acme"}, {Name: "Authorization", Value: "Bearer t0ken"}},
			wantHeaders: map[string][]string{
				"Content-Type":        {"application/json"},
				"X-Api-Key":           {"k-123"},
				"X-Involveo-Event":    {"task.created"},
				"X-Involveo-Delivery": {"d-42"},
				"User-Agent":          {"involveo-test/1"},
				"X-Tenant":            {"acme"},
				"Authorization":       {"Bearer t0ken"},
			},
		},
		{
			name:        "lets a subscriber's header replace the User-Agent",
			headers:     []Header{{Name: "user-agent", Value: "acme-allowlisted"}},
			wantHeaders: map[string][]string{"User-Agent": {"acme-allowlisted"}},
		},
		{
			name:        "keeps the relay's value when a subscriber header repeats a contract header",
			headers:     []Header{{Name: "X-Involveo-Event", Value: "forged"}, {Name: "X-Api-Key", Value: "forged"}},
			wantHeaders: map[string][]string{"X-Involveo-Event": {"task.created"}, "X-Api-Key": {"k-123"}},
		},
		{
			name:        "sends every value of a repeated extra header",
			headers:     []Header{{Name: "X-Tag", Value: "a"}, {Name: "X-Tag", Value: "b"}},
			wantHeaders: map[string][]string{"X-Tag": {"a", "b"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				if r.Method != http.MethodPost {
					t.Errorf("method = %s, want POST", r.Method)
				}
				body, err := io.ReadAll(r.Body)
				if err != nil {
					t.Errorf("read body: %v", err)
				}
				if !bytes.Equal(body, []byte(payload)) {
					t.Errorf("body differs from what was sent:\n got %s\nwant %s", body, payload)
				}
				if r.ContentLength != int64(len(payload)) {
					t.Errorf("Content-Length = %d, want %d", r.ContentLength, len(payload))
				}
				for name, want := range tt.wantHeaders {
					if got := r.Header.Values(name); !slices.Equal(got, want) {
						t.Errorf("header %s = %q, want %q", name, got, want)
					}
				}
				if _, sent := r.Header[replayableMarker]; sent {
					t.Errorf("header %s was sent; it only marks the request replayable", replayableMarker)
				}
			})
			c := NewClient(Options{AllowCIDRs: allowLoopback, UserAgent: "involveo-test/1"})
			req := request(t, srv.URL+"/hooks/involveo?tenant=acme")
			req.Headers = tt.headers

			res := c.Deliver(t.Context(), req)

			if !res.OK() || res.StatusCode != http.StatusOK || res.Reason != "HTTP 200 OK" {
				t.Errorf("result = %+v, want OK with reason %q", res, "HTTP 200 OK")
			}
			if calls.Load() != 1 {
				t.Errorf("handler called %d times, want once", calls.Load())
			}
		})
	}
}

func TestClient_DeliverSendsTheDefaultUserAgent(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if got := r.UserAgent(); got != DefaultUserAgent {
			t.Errorf("User-Agent = %q, want %q", got, DefaultUserAgent)
		}
	})
	res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(t.Context(), request(t, srv.URL))
	if !res.OK() {
		t.Fatalf("result = %+v, want OK", res)
	}
}

func TestClient_DeliverStatusOutcomes(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		redirect   bool
		wantOK     bool
		wantReason string
	}{
		{name: "counts 200 as success", status: 200, wantOK: true, wantReason: "HTTP 200 OK"},
		{name: "counts 201 as a failure", status: 201, wantReason: "HTTP 201 Created"},
		{name: "counts 202 as a failure", status: 202, wantReason: "HTTP 202 Accepted"},
		{name: "counts 204 as a failure", status: 204, wantReason: "HTTP 204 No Content"},
		{name: "does not follow a 301 and counts it as a failure", status: 301, redirect: true, wantReason: "HTTP 301 Moved Permanently (redirects are not followed)"},
		{name: "does not follow a 302 and counts it as a failure", status: 302, redirect: true, wantReason: "HTTP 302 Found (redirects are not followed)"},
		{name: "does not follow a 307 and counts it as a failure", status: 307, redirect: true, wantReason: "HTTP 307 Temporary Redirect (redirects are not followed)"},
		{name: "counts 400 as a failure", status: 400, wantReason: "HTTP 400 Bad Request"},
		{name: "counts 500 as a failure", status: 500, wantReason: "HTTP 500 Internal Server Error"},
		{name: "counts 503 as a failure", status: 503, wantReason: "HTTP 503 Service Unavailable"},
		{name: "counts a status without a standard text as a failure", status: 599, wantReason: "HTTP 599"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var targetCalls atomic.Int32
			target := newServer(t, func(http.ResponseWriter, *http.Request) { targetCalls.Add(1) })
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.redirect {
					w.Header().Set("Location", target.URL+"/elsewhere")
				}
				w.WriteHeader(tt.status)
			})

			res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(t.Context(), request(t, srv.URL))

			if res.OK() != tt.wantOK || res.StatusCode != tt.status || res.Reason != tt.wantReason || res.Canceled {
				t.Errorf("result = %+v, want OK=%v status %d reason %q", res, tt.wantOK, tt.status, tt.wantReason)
			}
			if targetCalls.Load() != 0 {
				t.Errorf("the redirect target was called %d times; redirects must not be followed", targetCalls.Load())
			}
		})
	}
}

// waitForClientToLeave answers only once the client has given up on the request. The
// server notices a closed connection (and cancels r's context) only after the request
// body has been read, so the body is read first.
func waitForClientToLeave(_ http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	<-r.Context().Done()
}

func TestClient_DeliverTimesOut(t *testing.T) {
	const timeout = 200 * time.Millisecond
	srv := newServer(t, waitForClientToLeave)
	req := request(t, srv.URL)
	req.Timeout = timeout

	res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(t.Context(), req)

	if res.OK() || res.Canceled || res.StatusCode != 0 || res.Reason != "timeout after 200ms" {
		t.Errorf("result = %+v, want a failure with reason %q", res, "timeout after 200ms")
	}
	if res.Duration < timeout || res.Duration > timeout+time.Second {
		t.Errorf("duration = %s, want about %s", res.Duration, timeout)
	}
}

// With one connection per host and that connection busy, a second delivery waits for a
// connection until its timeout: the reason says it never got one.
func TestClient_DeliverTimesOutWaitingForAConnection(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Involveo-Delivery") == "first" {
			close(entered)
			<-release
		}
	})
	c := NewClient(Options{AllowCIDRs: allowLoopback, MaxConnsPerHost: 1})
	first := request(t, srv.URL)
	first.DeliveryID = "first"
	firstDone := make(chan Result)
	go func() { firstDone <- c.Deliver(t.Context(), first) }()
	<-entered

	second := request(t, srv.URL)
	second.Timeout = 100 * time.Millisecond
	res := c.Deliver(t.Context(), second)
	close(release)

	if want := "timeout after 100ms before a connection was established"; res.OK() || res.Reason != want {
		t.Errorf("second result = %+v, want reason %q", res, want)
	}
	if res := <-firstDone; !res.OK() {
		t.Errorf("first result = %+v, want OK", res)
	}
}

func TestClient_DeliverTransportFailures(t *testing.T) {
	refused := closedAddress(t)
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	// The refused handshake is the point of the test, not news for the test log.
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	plainSrv := newServer(t, func(http.ResponseWriter, *http.Request) {})
	hangUpSrv := newServer(t, hangUp)
	tests := []struct {
		name       string
		url        string
		wantReason string
	}{
		{name: "names a refused connection", url: "http://" + refused + "/hook", wantReason: "connection refused"},
		{name: "names a failed DNS lookup and the host", url: "http://nonexistent.invalid/hook", wantReason: "dns lookup failed for host nonexistent.invalid"},
		{name: "names an untrusted certificate", url: tlsSrv.URL, wantReason: "tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{name: "names a plain-HTTP server behind an https URL", url: strings.Replace(plainSrv.URL, "http:", "https:", 1), wantReason: "http: server gave HTTP response to HTTPS client"},
		{name: "names a connection closed without an answer", url: hangUpSrv.URL, wantReason: "connection closed by the subscriber before it answered"},
		{name: "names an unsupported scheme", url: "ftp://" + refused + "/hook", wantReason: `unsupported protocol scheme "ftp"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(t.Context(), request(t, tt.url))

			if res.OK() || res.Canceled || res.StatusCode != 0 || !strings.HasPrefix(res.Reason, tt.wantReason) {
				t.Errorf("result = %+v, want a failure with a reason starting %q", res, tt.wantReason)
			}
		})
	}
}

// hangUp closes the connection without answering, like a receiver that crashed.
func hangUp(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	_ = conn.Close()
}

// closedAddress returns a loopback address nothing listens on.
func closedAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestClient_DeliverReasonsKeepSecretsOut(t *testing.T) {
	refused := closedAddress(t)
	tests := []struct {
		name       string
		req        Request
		secret     string
		wantReason string
	}{
		{
			name:       "does not quote an API key the transport rejects",
			req:        Request{URL: mustURL(t, "http://"+refused+"/"), APIKey: "s3cret\nkey"},
			secret:     "s3cret",
			wantReason: `net/http: invalid header field value for "X-Api-Key"`,
		},
		{
			name:       "does not quote a header value the transport rejects",
			req:        Request{URL: mustURL(t, "http://"+refused+"/"), Headers: []Header{{Name: "Authorization", Value: "Bearer s3cret\r\n"}}},
			secret:     "s3cret",
			wantReason: `net/http: invalid header field value for "Authorization"`,
		},
		{
			name:       "does not quote a token in the URL's query",
			req:        Request{URL: mustURL(t, "http://"+refused+"/hook?token=s3cret")},
			secret:     "s3cret",
			wantReason: "connection refused",
		},
		{
			name:       "does not quote a URL it cannot send",
			req:        Request{URL: &url.URL{Scheme: "http", Host: "exa mple.com", RawQuery: "token=s3cret"}},
			secret:     "s3cret",
			wantReason: "invalid destination URL",
		},
		{
			name:       "refuses a request without a URL",
			req:        Request{APIKey: "s3cret"},
			secret:     "s3cret",
			wantReason: "request has no destination URL",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(t.Context(), tt.req)

			if res.OK() || res.Reason != tt.wantReason {
				t.Errorf("result = %+v, want a failure with reason %q", res, tt.wantReason)
			}
			if strings.Contains(res.Reason, tt.secret) {
				t.Errorf("reason %q contains the secret", res.Reason)
			}
		})
	}
}

func TestClient_DeliverRefusesBlockedDestinations(t *testing.T) {
	var calls atomic.Int32
	srv := newServer(t, func(http.ResponseWriter, *http.Request) { calls.Add(1) })
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name  string
		url   string
		allow []netip.Prefix
	}{
		{name: "refuses the loopback test server without an allow-list", url: srv.URL},
		{name: "refuses localhost, a hostname resolving to loopback", url: fmt.Sprintf("http://localhost:%d/", port)},
		{name: "refuses loopback when only another range is allowed", url: srv.URL, allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := NewClient(Options{AllowCIDRs: tt.allow}).Deliver(t.Context(), request(t, tt.url))

			want := "is not allowed: loopback (allow it with --allow-destination-cidrs)"
			if res.OK() || res.Canceled || !strings.HasPrefix(res.Reason, "destination ") || !strings.Contains(res.Reason, want) {
				t.Errorf("result = %+v, want a refusal containing %q", res, want)
			}
		})
	}
	if calls.Load() != 0 {
		t.Errorf("the handler was called %d times; refused destinations must never be reached", calls.Load())
	}
}

func TestClient_DeliverReportsCancellation(t *testing.T) {
	shutdown := errors.New("relay shutting down")
	t.Run("reports Canceled when the caller cancels mid-attempt", func(t *testing.T) {
		entered := make(chan struct{})
		srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			waitForClientToLeave(w, r)
		})
		ctx, cancel := context.WithCancelCause(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() {
			<-entered
			cancel(shutdown)
		})

		res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(ctx, request(t, srv.URL))
		wg.Wait()

		if !res.Canceled || res.OK() || res.Reason != "canceled: relay shutting down" {
			t.Errorf("result = %+v, want Canceled with the caller's cause", res)
		}
	})
	t.Run("reports Canceled when the caller's context is already done", func(t *testing.T) {
		var calls atomic.Int32
		srv := newServer(t, func(http.ResponseWriter, *http.Request) { calls.Add(1) })
		ctx, cancel := context.WithCancelCause(t.Context())
		cancel(shutdown)

		res := NewClient(Options{AllowCIDRs: allowLoopback}).Deliver(ctx, request(t, srv.URL))

		if !res.Canceled || res.OK() {
			t.Errorf("result = %+v, want Canceled", res)
		}
		if calls.Load() != 0 {
			t.Errorf("the handler was called %d times, want never", calls.Load())
		}
	})
}

func TestClient_DeliverReusesConnections(t *testing.T) {
	const deliveries = 50
	var opened atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A body the client must drain before the connection can be reused.
		_, _ = w.Write(bytes.Repeat([]byte("ok\n"), 1000))
	}))
	srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := NewClient(Options{AllowCIDRs: allowLoopback})

	for i := range deliveries {
		if res := c.Deliver(t.Context(), request(t, srv.URL)); !res.OK() {
			t.Fatalf("delivery %d: %+v", i, res)
		}
	}

	if n := opened.Load(); n > 2 {
		t.Errorf("%d deliveries opened %d connections, want at most 2", deliveries, n)
	}
}

// A receiver that closes a kept-alive connection just as the relay reuses it looks, to the
// relay, like a hang-up on a reused connection; the transport resends once on a fresh one
// instead of failing the attempt.
func TestClient_DeliverResendsWhenAPooledConnectionIsClosed(t *testing.T) {
	var calls atomic.Int32
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 2 {
			hangUp(w, r)
		}
	})
	c := NewClient(Options{AllowCIDRs: allowLoopback})
	if res := c.Deliver(t.Context(), request(t, srv.URL)); !res.OK() {
		t.Fatalf("first delivery: %+v", res)
	}

	res := c.Deliver(t.Context(), request(t, srv.URL))

	if !res.OK() {
		t.Errorf("second delivery = %+v, want OK after a resend", res)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("handler called %d times, want 3 (first, hung-up second, resent second)", n)
	}
}

func TestDeliver_ReadsRetryAfterOn429And503Only(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header string
		want   time.Duration
	}{
		{"reads seconds on 429", http.StatusTooManyRequests, "7", 7 * time.Second},
		{"reads seconds on 503", http.StatusServiceUnavailable, "120", 2 * time.Minute},
		{"ignores it on 500", http.StatusInternalServerError, "7", 0},
		{"ignores a negative value", http.StatusTooManyRequests, "-3", 0},
		{"ignores garbage", http.StatusTooManyRequests, "soon", 0},
		{"reads an HTTP date", http.StatusServiceUnavailable, time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat), 90 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", tt.header)
				w.WriteHeader(tt.status)
			}))
			defer srv.Close()
			c := NewClient(Options{AllowCIDRs: allowLoopback})
			u, _ := url.Parse(srv.URL)
			res := c.Deliver(context.Background(), Request{URL: u, Body: []byte(`{}`), Timeout: 5 * time.Second})
			if d := res.RetryAfter - tt.want; d < -2*time.Second || d > 0 {
				t.Fatalf("RetryAfter = %s, want %s", res.RetryAfter, tt.want)
			}
			if res.OK() {
				t.Fatal("a non-200 answer is OK")
			}
		})
	}
}
