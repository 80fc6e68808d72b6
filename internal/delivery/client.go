// Package delivery is the relay's one HTTP client: it POSTs one event to one subscriber
// and reports how that attempt ended. Queueing, retrying and recording outcomes belong
// to the caller; this package neither retries nor logs.
//
// Everything that decides how a delivery goes over the wire is in this file: the
// request's headers, the pooled transport, the per-attempt timeout, the dial-time guard
// against private destinations (see CheckDestination) and the table of outcomes.
package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for Options and Request fields left zero.
const (
	// DefaultTimeout is the per-attempt timeout of the Involveo contract (30 seconds),
	// used when Request.Timeout is zero so that a missing value never means "wait forever".
	DefaultTimeout = 30 * time.Second
	// DefaultMaxConnsPerHost bounds the connections to one subscriber host and is also the
	// number kept idle for reuse. Go's default of 2 idle connections per host makes a
	// fan-out burst to one host close and reopen (with TLS handshakes) all but two
	// connections; 16 keeps a busy subscriber's connections warm while a burst from the
	// relay still cannot open hundreds of sockets to one small receiver.
	DefaultMaxConnsPerHost = 16
	// DefaultMaxResponseBytes is how much of a response body is read before the
	// connection is given up. The relay needs only the status, but a connection returns
	// to the pool only once its body is drained; 64 KiB covers any sensible error page
	// while a receiver streaming megabytes cannot hold a worker.
	DefaultMaxResponseBytes = 64 << 10
	// DefaultUserAgent identifies the relay to receivers that filter or log callers.
	DefaultUserAgent = "involveo-webhook-relay"
)

// Transport limits that are not options.
const (
	// maxIdleConns bounds idle connections across all hosts. It only has to be large
	// enough not to evict the per-host idle connections of a relay delivering to many
	// subscribers (64 hosts × 16); idle sockets cost little and IdleConnTimeout reaps them.
	maxIdleConns = 1024
	// idleConnTimeout is how long an unused connection stays pooled: 90 seconds (Go's
	// default) outlives the pauses between events of an ordinary subscriber, so steady
	// traffic reuses connections, without keeping dead ones forever.
	idleConnTimeout = 90 * time.Second
	// tlsHandshakeTimeout fails a handshake that has stalled well before the attempt's
	// timeout (30s by default) would, so a broken TLS peer frees the worker sooner and
	// the reason says where it stalled. 10 seconds is Go's default and ample for any
	// working server.
	tlsHandshakeTimeout = 10 * time.Second
	// maxResponseHeaderBytes bounds a response's headers. The relay reads only the
	// status; Go's 1 MiB default multiplied by every concurrent delivery is memory a
	// misbehaving receiver could make the relay hold.
	maxResponseHeaderBytes = 64 << 10
)

// Header is one extra request header agreed with a subscriber.
type Header struct {
	Name, Value string
}

// Request is one delivery attempt of one event to one subscriber.
type Request struct {
	// URL is where the event is POSTed; it must not be nil.
	URL *url.URL
	// APIKey is sent as X-Api-Key.
	APIKey string
	// Headers are the subscriber's extra headers. They may set User-Agent; they cannot
	// replace Content-Type, X-Api-Key, X-Involveo-Event or X-Involveo-Delivery, which
	// the relay always sets itself.
	Headers []Header
	// EventType is sent as X-Involveo-Event, such as "task.created".
	EventType string
	// DeliveryID is sent as X-Involveo-Delivery; it stays the same across the retries of
	// one delivery so receivers can de-duplicate.
	DeliveryID string
	// Body is sent byte for byte as the request body.
	Body []byte
	// Timeout bounds the whole attempt, from DNS lookup to the response status; zero
	// means DefaultTimeout.
	Timeout time.Duration
}

// Result is how one attempt ended. The outcome table on transportFailures says which
// results are failures and why.
type Result struct {
	// StatusCode is the response's status, or 0 when there was no response.
	StatusCode int
	// Reason names the cause in a few words, such as "HTTP 500 Internal Server Error"
	// or "timeout after 30s". It never contains header values, the API key or the URL's
	// path and query, so it may go into status, events and logs.
	Reason string
	// Duration is how long the attempt took.
	Duration time.Duration
	// Canceled is set when the caller's context ended the attempt (the relay is shutting
	// down, or the subscription was deleted): the attempt says nothing about the
	// subscriber, so the caller should not count it as a failure.
	Canceled bool
	// RetryAfter is the wait a 429 or 503 answer asked for in its Retry-After
	// header (seconds or an HTTP date), zero otherwise.
	RetryAfter time.Duration
}

// Gone reports a 410 answer: the receiver says the endpoint is gone for good,
// so retrying the delivery is pointless.
func (r Result) Gone() bool { return r.StatusCode == http.StatusGone }

// OK reports whether the subscriber accepted the event: the Involveo contract's only
// success is exactly 200.
func (r Result) OK() bool { return r.StatusCode == http.StatusOK }

// maxRetryAfter bounds a Retry-After value before the caller applies its own
// cap, so a hostile header cannot overflow a duration.
const maxRetryAfter = 7 * 24 * time.Hour

// Outcomes of an attempt, and why each counts the way it does (DESIGN §1: success is
// exactly 200; any other status, a timeout or a transport error is a failure).
//
//	outcome                           OK   Canceled  why
//	200 OK                            yes  no        the contract's one success
//	other 2xx (201, 202, 204, …)      no   no        the contract names exactly 200; a 202 or 204
//	                                                 receiver does not implement it, and the retry and
//	                                                 DeliveryHealthy=False make that visible
//	3xx                               no   no        redirects are not followed: following one would
//	                                                 send the API key and payload to a URL the tenant
//	                                                 never registered (perhaps over plain http); the
//	                                                 reason says so, the tenant fixes the URL
//	4xx, 5xx, any other status        no   no        the receiver refused or broke
//	per-attempt timeout               no   no        the receiver may have processed the event, but
//	                                                 without its 200 the relay cannot know; retrying
//	                                                 is at-least-once, X-Involveo-Delivery de-duplicates
//	refused destination (see          no   no        a retry will fail the same way, but counting it
//	CheckDestination)                                puts the refusal into the subscription's status
//	DNS, TCP, TLS and protocol errors no   no        no 200 arrived, whether or not the request did
//	caller's context ended            no   yes       the relay stopped the attempt, not the receiver
//
// Transport errors are named by transportFailures below; the first match wins. Anything
// unmatched keeps Go's own text, which is already specific for TLS ("tls: failed to
// verify certificate: x509: …", "http: server gave HTTP response to HTTPS client").
var transportFailures = []func(err error) (reason string, ok bool){
	destinationRefused,
	dnsFailed,
	connectionErrno,
	closedBeforeAnswer,
}

// errAttemptTimeout is the cause of the per-attempt context when its timeout fires. It
// tells the attempt's own timeout apart from the caller's context ending.
var errAttemptTimeout = errors.New("delivery attempt timed out")

// replayableMarker makes Go's transport treat the POST as replayable: a header with a
// nil value counts for net/http but is not sent. When a pooled connection turns out to
// have been closed by the receiver just as it was reused, the transport then resends on
// a fresh connection instead of failing the attempt. Resending is safe because delivery
// is at-least-once and X-Involveo-Delivery lets receivers de-duplicate.
const replayableMarker = "X-Idempotency-Key"

// Options configure a Client.
type Options struct {
	// AllowCIDRs are destinations allowed despite lying in a blocked range
	// (--allow-destination-cidrs; see CheckDestination).
	AllowCIDRs []netip.Prefix
	// MaxConnsPerHost bounds the connections to one host and is also how many are kept
	// idle for reuse; zero means DefaultMaxConnsPerHost. Waiting for a free connection
	// counts against the attempt's timeout.
	MaxConnsPerHost int
	// UserAgent is sent unless the subscriber's headers set one; empty means
	// DefaultUserAgent.
	UserAgent string
	// MaxResponseBytes is how much of a response body is drained; zero means
	// DefaultMaxResponseBytes.
	MaxResponseBytes int64
}

// Client delivers events. It is safe for concurrent use, and one Client should serve
// the whole relay so that connections are pooled across deliveries.
type Client struct {
	http             *http.Client
	userAgent        string
	maxResponseBytes int64
}

// NewClient returns a Client whose connections are pooled and whose dialer refuses
// blocked destinations not in o.AllowCIDRs.
func NewClient(o Options) *Client {
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = DefaultMaxConnsPerHost
	}
	if o.UserAgent == "" {
		o.UserAgent = DefaultUserAgent
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return &Client{
		http: &http.Client{
			Transport: newTransport(o),
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		userAgent:        o.UserAgent,
		maxResponseBytes: o.MaxResponseBytes,
	}
}

func newTransport(o Options) *http.Transport {
	allow := slices.Clone(o.AllowCIDRs)
	dialer := &net.Dialer{
		// ControlContext runs after name resolution, for every address actually
		// dialled, so a hostname that resolves (or is re-resolved, as in DNS rebinding)
		// to a blocked address is refused at the socket, whatever it resolved to when
		// the subscription was checked.
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("destination %q is not an IP address and port: %w", address, err)
			}
			return CheckDestination(ap.Addr(), allow)
		},
	}
	return &http.Transport{
		// No proxy, not even from HTTP_PROXY: a proxy would dial the destination itself,
		// past the dialer's guard.
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           maxIdleConns,
		MaxIdleConnsPerHost:    o.MaxConnsPerHost,
		MaxConnsPerHost:        o.MaxConnsPerHost,
		IdleConnTimeout:        idleConnTimeout,
		TLSHandshakeTimeout:    tlsHandshakeTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
	}
}

// Deliver makes one attempt to POST r and reports how it ended. It never returns an
// error: every outcome, including a malformed request, is a Result.
func (c *Client) Deliver(ctx context.Context, r Request) Result {
	start := time.Now()
	res := c.attempt(ctx, r)
	res.Duration = time.Since(start)
	return res
}

func (c *Client) attempt(ctx context.Context, r Request) Result {
	if r.URL == nil {
		return Result{Reason: "request has no destination URL"}
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	attemptCtx, cancel := context.WithTimeoutCause(ctx, timeout, errAttemptTimeout)
	defer cancel()

	// connected tells a timeout while connecting (a firewall dropping packets, a full
	// connection pool) from a receiver that accepted the connection and did not answer.
	var connected atomic.Bool
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { connected.Store(true) }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(attemptCtx, trace),
		http.MethodPost, r.URL.String(), bytes.NewReader(r.Body))
	if err != nil {
		// The parse error would quote the URL, whose query may carry a token.
		return Result{Reason: "invalid destination URL"}
	}
	c.setHeaders(req.Header, r)

	resp, err := c.http.Do(req)
	if err != nil {
		return failure(ctx, attemptCtx, timeout, connected.Load(), err)
	}
	defer resp.Body.Close()
	// The subscriber has answered; a failure to drain changes nothing but whether the
	// connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, c.maxResponseBytes))
	return Result{StatusCode: resp.StatusCode, Reason: statusReason(resp), RetryAfter: retryAfter(resp, time.Now())}
}

// retryAfter reads Retry-After where the status gives it a meaning for the
// sender (RFC 9110 §10.2.3: 503; RFC 6585 §4: 429).
func retryAfter(resp *http.Response, now time.Time) time.Duration {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return min(at.Sub(now), maxRetryAfter)
	}
	return 0
}

// setHeaders sets the subscriber's headers first and the contract's headers last, so
// that the contract's always win.
func (c *Client) setHeaders(h http.Header, r Request) {
	for _, extra := range r.Headers {
		h.Add(extra.Name, extra.Value)
	}
	if h.Get("User-Agent") == "" {
		h.Set("User-Agent", c.userAgent)
	}
	h.Set("Content-Type", "application/json")
	h.Set("X-Api-Key", r.APIKey)
	h.Set("X-Involveo-Event", r.EventType)
	h.Set("X-Involveo-Delivery", r.DeliveryID)
	if _, set := h[replayableMarker]; !set {
		h[replayableMarker] = nil
	}
}

func statusReason(resp *http.Response) string {
	reason := fmt.Sprintf("HTTP %d", resp.StatusCode)
	if text := http.StatusText(resp.StatusCode); text != "" {
		reason += " " + text
	}
	if resp.StatusCode/100 == 3 && resp.Header.Get("Location") != "" {
		reason += " (redirects are not followed)"
	}
	return reason
}

// failure turns an error from the HTTP client into a Result. The attempt's own timeout
// is checked before the caller's context: when the caller's context ends first, the
// attempt's cause is the caller's, not errAttemptTimeout.
func failure(parent, attemptCtx context.Context, timeout time.Duration, connected bool, err error) Result {
	if errors.Is(context.Cause(attemptCtx), errAttemptTimeout) {
		if !connected {
			return Result{Reason: fmt.Sprintf("timeout after %s before a connection was established", timeout)}
		}
		return Result{Reason: fmt.Sprintf("timeout after %s", timeout)}
	}
	if parent.Err() != nil {
		return Result{Reason: "canceled: " + context.Cause(parent).Error(), Canceled: true}
	}
	for _, rule := range transportFailures {
		if reason, ok := rule(err); ok {
			return Result{Reason: reason}
		}
	}
	// The client's *url.Error quotes the URL, whose query may carry a token; the error
	// it wraps does not.
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	return Result{Reason: err.Error()}
}

func destinationRefused(err error) (string, bool) {
	var refused *DestinationError
	if !errors.As(err, &refused) {
		return "", false
	}
	return refused.Error(), true
}

func dnsFailed(err error) (string, bool) {
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) {
		return "", false
	}
	return fmt.Sprintf("dns lookup failed for host %s: %s", dnsErr.Name, dnsErr.Err), true
}

// connectionErrno names socket errors by the system's own words ("connection
// refused", "connection reset by peer", "no route to host"), without the addresses Go
// adds around them.
func connectionErrno(err error) (string, bool) {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return "", false
	}
	return errno.Error(), true
}

func closedBeforeAnswer(err error) (string, bool) {
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", false
	}
	return "connection closed by the subscriber before it answered", true
}
