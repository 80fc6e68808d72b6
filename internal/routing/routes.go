package routing

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"math/bits"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/involveo/webhook-operator/internal/filter"
	"github.com/involveo/webhook-operator/internal/signing"
)

// Route is a compiled subscription: defaults applied and secret keys resolved, ready for
// the delivery client. Routes are shared by every goroutine of the relay and must not be
// modified.
//
// A Route never prints its API key or header values: String, Format (every fmt verb),
// MarshalLog (logr), LogValue (slog) and MarshalJSON all leave them out, and so does
// every error this package returns.
type Route struct {
	ID         string
	Generation int64
	URL        *url.URL
	Events     []string
	APIKey     string
	Headers    []ResolvedHeader
	Timeout    time.Duration
	MaxRetries int
	Interval   time.Duration
	// Filter, when set, must be true for an event to be delivered.
	Filter *filter.Program
	// Signing holds the secrets deliveries are signed with, current first.
	Signing []signing.Secret
	// MaxInFlight caps concurrent attempts; 0 means the relay's default.
	MaxInFlight int
	// RatePerSecond caps attempts per second; 0 means no limit.
	RatePerSecond float64

	// signingRaw keeps the resolved signing secrets for the fingerprint only,
	// so that a rotation under an unchanged table is seen.
	signingRaw []string
}

// ResolvedHeader is an extra header with its value resolved. Like Route it never prints
// its value.
type ResolvedHeader struct {
	Name  string
	Value string
}

// Matches reports whether the route takes events of the given type.
func (r *Route) Matches(eventType string) bool {
	for _, p := range r.Events {
		if MatchEvent(p, eventType) {
			return true
		}
	}
	return false
}

// routeView is what a Route shows of itself: everything but the secrets.
type routeView struct {
	ID         string   `json:"id"`
	Generation int64    `json:"generation,omitempty"`
	URL        string   `json:"url"`
	Events     []string `json:"events"`
	Headers    []string `json:"headers,omitempty"`
	Timeout    string   `json:"timeout"`
	MaxRetries int      `json:"maxRetries"`
	Interval   string   `json:"interval"`
}

func (r Route) view() routeView {
	v := routeView{
		ID:         r.ID,
		Generation: r.Generation,
		URL:        redactURL(r.URL),
		Events:     r.Events,
		Timeout:    Duration{r.Timeout}.String(),
		MaxRetries: r.MaxRetries,
		Interval:   Duration{r.Interval}.String(),
	}
	for _, h := range r.Headers {
		v.Headers = append(v.Headers, h.Name)
	}
	return v
}

// String describes the route without secrets.
func (r Route) String() string {
	v := r.view()
	return fmt.Sprintf("route %s (generation %d) → %s events=%v headers=%v timeout=%s retries=%d×%s",
		v.ID, v.Generation, v.URL, v.Events, v.Headers, v.Timeout, v.MaxRetries, v.Interval)
}

// Format prints String for every verb, so %+v and %#v cannot expose fields.
func (r Route) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(r.String())) }

// MarshalLog is what logr sinks log instead of the struct.
func (r Route) MarshalLog() any { return r.view() }

// LogValue is what log/slog logs instead of the struct.
func (r Route) LogValue() slog.Value {
	v := r.view()
	return slog.GroupValue(
		slog.String("id", v.ID),
		slog.Int64("generation", v.Generation),
		slog.String("url", v.URL),
		slog.Any("events", v.Events),
		slog.Any("headers", v.Headers),
	)
}

// MarshalJSON writes the route without secrets, for status endpoints and debugging.
func (r Route) MarshalJSON() ([]byte, error) { return json.Marshal(r.view()) }

// String describes the header without its value.
func (h ResolvedHeader) String() string { return h.Name + ": " + redacted }

// Format prints String for every verb.
func (h ResolvedHeader) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(h.String())) }

// MarshalLog is what logr sinks log instead of the struct.
func (h ResolvedHeader) MarshalLog() any { return h.String() }

// LogValue is what log/slog logs instead of the struct.
func (h ResolvedHeader) LogValue() slog.Value { return slog.StringValue(h.String()) }

// MarshalJSON writes the header without its value.
func (h ResolvedHeader) MarshalJSON() ([]byte, error) { return json.Marshal(h.String()) }

// redactURL hides the parts of a URL that commonly carry credentials: user info and
// the query string (many receivers take a token as ?token=…).
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	if c.User != nil {
		c.User = url.User("xxxxx")
	}
	if c.RawQuery != "" {
		c.RawQuery = "xxxxx"
	}
	c.Fragment, c.RawFragment = "", ""
	return c.String()
}

func redactURLString(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return redactURL(u)
}

// Routes is a compiled routing table, immutable once built and safe for concurrent use.
// A nil *Routes is an empty table.
type Routes struct {
	// Revision is the table's revision, or when the table had none, the revision Render
	// would give it. Read-only.
	Revision string

	all  []*Route          // sorted by ID; indexes below point into it
	byID map[string]*Route // for Get
	// exact, prefix and any index the routes by pattern kind so that Match looks up a
	// handful of map keys instead of testing every pattern of every route. The index
	// lists are ascending, so results come out in ID order.
	exact  map[string][]int32 // exact event type → routes
	prefix map[string][]int32 // "task." (from "task.*") → routes
	any    []int32            // routes with "*"
	// fingerprint covers the revision and every resolved value, so that a credential
	// rotation under an unchanged table is still seen as a change.
	fingerprint [sha256.Size]byte
	// rejected lists subscriptions left out on their own (see Compile).
	rejected []error
}

// Compile validates t, applies defaults and resolves every secretKey against the
// credentials (the credentials file or Secret data). A missing key or a value that cannot
// be sent as a header fails the whole table; the error names the key, never the value.
func Compile(t *Table, credentials map[string][]byte) (*Routes, error) {
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("compile routing table: %w", err)
	}
	revision := t.Revision
	if revision == "" {
		var err error
		if revision, err = tableRevision(t); err != nil {
			return nil, fmt.Errorf("compile routing table: %w", err)
		}
	}

	order := make([]int, len(t.Subscriptions))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(t.Subscriptions[a].ID, t.Subscriptions[b].ID) })

	r := &Routes{
		Revision: revision,
		all:      make([]*Route, 0, len(order)),
		byID:     make(map[string]*Route, len(order)),
		exact:    make(map[string][]int32),
		prefix:   make(map[string][]int32),
	}
	var errs []error
	for _, i := range order {
		route, err := compileSubscription(&t.Subscriptions[i], credentials)
		var rejected *routeRejection
		switch {
		case errors.As(err, &rejected):
			// A route the relay cannot serve as written (a filter that does
			// not compile, a malformed signing secret) is left out alone:
			// the other subscriptions keep their deliveries.
			r.rejected = append(r.rejected, fmt.Errorf("%s.%w", subscriptionPath(i, t.Subscriptions[i].ID), rejected.err))
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("%s.%w", subscriptionPath(i, t.Subscriptions[i].ID), err))
			continue
		}
		r.add(route)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("compile routing table: %w", err)
	}
	r.fingerprint = fingerprint(r)
	return r, nil
}

func compileSubscription(s *Subscription, credentials map[string][]byte) (*Route, error) {
	// Validate has accepted the URL, so it parses.
	u, err := url.Parse(s.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	route := &Route{
		ID:         s.ID,
		Generation: s.Generation,
		URL:        u,
		Events:     slices.Clone(s.Events),
		Timeout:    DefaultTimeout,
		MaxRetries: DefaultMaxRetries,
		Interval:   DefaultInterval,
	}
	if route.APIKey, err = resolve(s.APIKey.Value, s.APIKey.SecretKey, credentials); err != nil {
		return nil, fmt.Errorf("apiKey: %w", err)
	}
	for i, h := range s.Headers {
		value, err := resolve(h.Value, h.SecretKey, credentials)
		if err != nil {
			return nil, fmt.Errorf("headers[%d] (%s): %w", i, h.Name, err)
		}
		route.Headers = append(route.Headers, ResolvedHeader{Name: h.Name, Value: value})
	}
	if s.Timeout != nil {
		route.Timeout = s.Timeout.Duration
	}
	route.MaxInFlight = s.MaxInFlight
	route.RatePerSecond = s.RatePerSecond
	if s.Filter != "" {
		if route.Filter, err = filter.Compile(s.Filter); err != nil {
			return nil, &routeRejection{fmt.Errorf("filter: %w", err)}
		}
	}
	if s.Signing != nil {
		secrets := []Secret{s.Signing.Secret}
		if s.Signing.Previous != nil {
			secrets = append(secrets, *s.Signing.Previous)
		}
		for i, sec := range secrets {
			field := []string{"signing.secret", "signing.previous"}[i]
			raw, err := resolveRaw(sec.Value, sec.SecretKey, credentials)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", field, err)
			}
			parsed, err := signing.ParseSecret([]byte(raw))
			if err != nil {
				return nil, &routeRejection{fmt.Errorf("%s: %w", field, err)}
			}
			route.Signing = append(route.Signing, parsed)
			route.signingRaw = append(route.signingRaw, raw)
		}
	}
	if s.Retry != nil {
		if s.Retry.MaxRetries != nil {
			route.MaxRetries = *s.Retry.MaxRetries
		}
		if s.Retry.Interval != nil {
			route.Interval = s.Retry.Interval.Duration
		}
	}
	return route, nil
}

// resolve returns the literal value or the credential under secretKey. The value is
// checked here because Go's HTTP client refuses a request with a bad header value, and a
// credential written with a trailing newline is a common mistake best reported at load.
func resolve(value, secretKey string, credentials map[string][]byte) (string, error) {
	if secretKey == "" {
		return value, nil
	}
	v, ok := credentials[secretKey]
	switch {
	case !ok:
		return "", fmt.Errorf("credentials key %q not found", secretKey)
	case len(v) == 0:
		return "", fmt.Errorf("credentials key %q is empty", secretKey)
	case !httpguts.ValidHeaderFieldValue(string(v)):
		return "", fmt.Errorf("credentials key %q does not hold a valid HTTP header value (control characters or a line break, such as a trailing newline)", secretKey)
	}
	return string(v), nil
}

// routeRejection marks a subscription the relay leaves out on its own,
// rather than refusing the whole table.
type routeRejection struct{ err error }

func (e *routeRejection) Error() string { return e.err.Error() }

// resolveRaw is resolve for values that are not sent as headers (signing
// keys may be any bytes).
func resolveRaw(value, secretKey string, credentials map[string][]byte) (string, error) {
	if secretKey == "" {
		return value, nil
	}
	v, ok := credentials[secretKey]
	switch {
	case !ok:
		return "", fmt.Errorf("credentials key %q not found", secretKey)
	case len(v) == 0:
		return "", fmt.Errorf("credentials key %q is empty", secretKey)
	}
	return string(v), nil
}

// Rejected lists the subscriptions left out of the table and why.
func (r *Routes) Rejected() []error {
	if r == nil {
		return nil
	}
	return r.rejected
}

func (r *Routes) add(route *Route) {
	idx := int32(len(r.all))
	r.all = append(r.all, route)
	r.byID[route.ID] = route
	// appendOnce skips a pattern listed twice in one route: this route's index would
	// already be the last one in the list.
	appendOnce := func(list []int32) []int32 {
		if n := len(list); n > 0 && list[n-1] == idx {
			return list
		}
		return append(list, idx)
	}
	for _, p := range route.Events {
		switch prefix, wildcard := strings.CutSuffix(p, "*"); {
		case p == "*":
			r.any = appendOnce(r.any)
		case wildcard:
			r.prefix[prefix] = appendOnce(r.prefix[prefix])
		default:
			r.exact[p] = appendOnce(r.exact[p])
		}
	}
}

// Match returns the routes that take events of the given type, ordered by ID, each once
// even when several of its patterns match. The slice is the caller's.
func (r *Routes) Match(eventType string) []*Route {
	if r == nil {
		return nil
	}
	// At most one exact list, one per dot in the type, and the "*" list: a fixed array
	// keeps the common case free of allocations besides the result.
	var buf [8][]int32
	lists := buf[:0]
	if l := r.exact[eventType]; len(l) > 0 {
		lists = append(lists, l)
	}
	if len(r.prefix) > 0 {
		for i := 0; i < len(eventType); i++ {
			if eventType[i] == '.' {
				if l := r.prefix[eventType[:i+1]]; len(l) > 0 {
					lists = append(lists, l)
				}
			}
		}
	}
	if len(r.any) > 0 {
		lists = append(lists, r.any)
	}

	switch len(lists) {
	case 0:
		return nil
	case 1:
		out := make([]*Route, len(lists[0]))
		for i, idx := range lists[0] {
			out[i] = r.all[idx]
		}
		return out
	}
	// Several lists may share routes. Marking a bitset over all routes and reading it
	// back in order merges and de-duplicates in time linear in the matches plus
	// len(all)/64, with no sorting.
	set := make([]uint64, (len(r.all)+63)/64)
	total := 0
	for _, l := range lists {
		total += len(l)
		for _, idx := range l {
			set[idx/64] |= 1 << (idx % 64)
		}
	}
	out := make([]*Route, 0, total)
	for w, word := range set {
		for word != 0 {
			out = append(out, r.all[w*64+bits.TrailingZeros64(word)])
			word &= word - 1
		}
	}
	return out
}

// Get returns the route with the given ID.
func (r *Routes) Get(id string) (*Route, bool) {
	if r == nil {
		return nil, false
	}
	route, ok := r.byID[id]
	return route, ok
}

// All returns every route, ordered by ID. The slice is the caller's.
func (r *Routes) All() []*Route {
	if r == nil {
		return nil
	}
	return slices.Clone(r.all)
}

// Len returns the number of routes.
func (r *Routes) Len() int {
	if r == nil {
		return 0
	}
	return len(r.all)
}

// String describes the table by revision and size.
func (r *Routes) String() string {
	if r == nil {
		return "routes (none loaded)"
	}
	return fmt.Sprintf("routes revision %s (%d routes)", r.Revision, len(r.all))
}

// sameAs reports whether two tables would deliver identically, so sources can skip
// reporting a reload that changed nothing (a touched file, a metadata-only update).
func (r *Routes) sameAs(other *Routes) bool {
	return r != nil && other != nil && r.fingerprint == other.fingerprint
}

func fingerprint(r *Routes) [sha256.Size]byte {
	h := sha256.New()
	writeString(h, r.Revision)
	for _, route := range r.all {
		writeString(h, route.ID)
		writeInt(h, route.Generation)
		writeString(h, route.URL.String())
		writeInt(h, int64(len(route.Events)))
		for _, e := range route.Events {
			writeString(h, e)
		}
		writeString(h, route.APIKey)
		writeInt(h, int64(len(route.Headers)))
		for _, hd := range route.Headers {
			writeString(h, hd.Name)
			writeString(h, hd.Value)
		}
		writeInt(h, int64(route.Timeout))
		writeInt(h, int64(route.MaxRetries))
		writeInt(h, int64(route.Interval))
		if route.Filter != nil {
			writeString(h, route.Filter.String())
		}
		writeInt(h, int64(len(route.signingRaw)))
		for _, raw := range route.signingRaw {
			writeString(h, raw)
		}
		writeInt(h, int64(route.MaxInFlight))
		writeString(h, strconv.FormatFloat(route.RatePerSecond, 'g', -1, 64))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// writeString length-prefixes s so that field boundaries cannot be shifted to forge an
// equal hash from different fields.
func writeString(h hash.Hash, s string) {
	writeInt(h, int64(len(s)))
	_, _ = h.Write([]byte(s))
}

func writeInt(h hash.Hash, n int64) {
	var b [binary.MaxVarintLen64]byte
	_, _ = h.Write(b[:binary.PutVarint(b[:], n)])
}
