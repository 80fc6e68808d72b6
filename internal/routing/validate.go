package routing

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	"golang.org/x/net/http/httpguts"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ReservedHeaders are the headers a subscription may not set, in canonical form.
// The relay sets the first six itself (DESIGN §4); the rest are hop-by-hop headers that
// describe the connection rather than the request, which Go's HTTP client manages and a
// subscription must not be able to break. User-Agent is deliberately allowed: some
// receivers whitelist callers by it.
var ReservedHeaders = []string{
	"Content-Type",
	"Content-Length",
	"Host",
	"X-Api-Key",
	"X-Involveo-Event",
	"X-Involveo-Delivery",
	"Connection",
	"Keep-Alive",
	"Proxy-Connection",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// IsReservedHeader reports whether name (in any case) is one of ReservedHeaders.
func IsReservedHeader(name string) bool {
	canonical := http.CanonicalHeaderKey(name)
	for _, reserved := range ReservedHeaders {
		if canonical == reserved {
			return true
		}
	}
	return false
}

// MaxIDLength fits the in-cluster ID: a namespace (63) + "/" + a name (253).
const MaxIDLength = 63 + 1 + 253

// MaxEventTypeLength bounds an event type or pattern; Involveo's types are a few dozen
// characters and the relay uses them in queue subjects.
const MaxEventTypeLength = 255

// FieldError is one validation failure, with the path of the offending field
// ("subscriptions[2] (team-a/crm).events[0]").
type FieldError struct {
	// Field is the path of the field.
	Field string
	// Detail says what is wrong, quoting the value unless it may be secret.
	Detail string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// Validate checks the table as a whole: its version, every subscription, and that IDs
// are unique. It returns every problem found, joined (errors.Join), each a *FieldError.
func (t *Table) Validate() error {
	var errs []error
	if t.Version != 0 && t.Version != CurrentVersion {
		errs = append(errs, &FieldError{"version", fmt.Sprintf("%d is not supported (this reader knows version %d)", t.Version, CurrentVersion)})
	}
	seen := make(map[string]int, len(t.Subscriptions))
	for i := range t.Subscriptions {
		s := &t.Subscriptions[i]
		prefix := subscriptionPath(i, s.ID)
		for _, err := range s.fieldErrors() {
			err.Field = prefix + "." + err.Field
			errs = append(errs, err)
		}
		if s.ID == "" {
			continue
		}
		if first, dup := seen[s.ID]; dup {
			errs = append(errs, &FieldError{prefix + ".id", fmt.Sprintf("duplicate of subscriptions[%d]", first)})
			continue
		}
		seen[s.ID] = i
	}
	return errors.Join(errs...)
}

// Validate checks one subscription on its own, with field paths relative to it
// ("events[0]"). The manager uses it to mark a single WebhookSubscription InvalidSpec
// instead of rendering a table the relay would refuse.
func (s *Subscription) Validate() error {
	var errs []error
	for _, err := range s.fieldErrors() {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func subscriptionPath(i int, id string) string {
	if id == "" {
		return fmt.Sprintf("subscriptions[%d]", i)
	}
	return fmt.Sprintf("subscriptions[%d] (%s)", i, id)
}

func (s *Subscription) fieldErrors() []*FieldError {
	var errs []*FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{field, fmt.Sprintf(format, args...)})
	}

	if err := validID(s.ID); err != nil {
		add("id", "%v", err)
	}
	if s.Generation < 0 {
		add("generation", "%d must not be negative", s.Generation)
	}
	if err := validURL(s.URL); err != nil {
		add("url", "%v", err)
	}
	if len(s.Events) == 0 {
		add("events", "must list at least one event pattern")
	}
	for i, p := range s.Events {
		if err := ValidEventPattern(p); err != nil {
			add(fmt.Sprintf("events[%d]", i), "%v", err)
		}
	}
	if err := validSecret(s.APIKey.Value, s.APIKey.SecretKey); err != nil {
		add("apiKey", "%v", err)
	}
	names := make(map[string]int, len(s.Headers))
	for i, h := range s.Headers {
		field := fmt.Sprintf("headers[%d]", i)
		if err := validHeaderName(h.Name); err != nil {
			add(field+".name", "%v", err)
		} else if first, dup := names[http.CanonicalHeaderKey(h.Name)]; dup {
			add(field+".name", "%q duplicates headers[%d] (names are case-insensitive)", h.Name, first)
		} else {
			names[http.CanonicalHeaderKey(h.Name)] = i
		}
		if err := validSecret(h.Value, h.SecretKey); err != nil {
			add(field, "%v", err)
		}
	}
	if s.Timeout != nil {
		if err := inRange(s.Timeout.Duration, MinTimeout, MaxTimeout); err != nil {
			add("timeout", "%v", err)
		}
	}
	if s.Signing != nil {
		if err := validSecret(s.Signing.Secret.Value, s.Signing.Secret.SecretKey); err != nil {
			add("signing.secret", "%v", err)
		}
		if p := s.Signing.Previous; p != nil {
			if err := validSecret(p.Value, p.SecretKey); err != nil {
				add("signing.previous", "%v", err)
			}
		}
	}
	if s.MaxInFlight < 0 || s.MaxInFlight > MaxMaxInFlight {
		add("maxInFlight", "%d is outside 0..%d", s.MaxInFlight, MaxMaxInFlight)
	}
	if s.RatePerSecond < 0 || s.RatePerSecond > MaxRatePerSecond {
		add("ratePerSecond", "%g is outside 0..%d", s.RatePerSecond, MaxRatePerSecond)
	}
	if len(s.Filter) > MaxFilterLength {
		add("filter", "is %d characters long, more than %d", len(s.Filter), MaxFilterLength)
	}
	if s.Retry != nil {
		if n := s.Retry.MaxRetries; n != nil && (*n < 0 || *n > MaxMaxRetries) {
			add("retry.maxRetries", "%d is outside 0..%d", *n, MaxMaxRetries)
		}
		if s.Retry.Interval != nil {
			if err := inRange(s.Retry.Interval.Duration, MinInterval, MaxInterval); err != nil {
				add("retry.interval", "%v", err)
			}
		}
	}
	return errs
}

func validID(id string) error {
	switch {
	case id == "":
		return errors.New("must not be empty")
	case len(id) > MaxIDLength:
		return fmt.Errorf("is %d characters long, more than %d", len(id), MaxIDLength)
	case strings.ContainsFunc(id, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return fmt.Errorf("%q must not contain spaces or control characters", id)
	}
	return nil
}

// validURL quotes the URL only with its user info and query hidden (see redactURL):
// the error ends up in status messages and logs.
func validURL(raw string) error {
	if raw == "" {
		return errors.New("must not be empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error would repeat the raw URL; its inner error says what is wrong.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("is not a valid URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q must be an absolute http or https URL", redactURL(u))
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%q has no host", redactURL(u))
	}
	return nil
}

// ValidEventType checks an event type as ingested: dot-separated segments of lower-case
// letters, digits and underscores ("task.status_changed").
func ValidEventType(t string) error {
	if len(t) > MaxEventTypeLength {
		return fmt.Errorf("event type is %d characters long, more than %d", len(t), MaxEventTypeLength)
	}
	if !isEventType(t) {
		return fmt.Errorf("%q is not a valid event type (dot-separated segments of a-z, 0-9 and _)", t)
	}
	return nil
}

// ValidEventPattern checks a subscription's event pattern: an exact event type, a
// prefix followed by ".*" ("task.*"), or "*".
func ValidEventPattern(p string) error {
	if len(p) > MaxEventTypeLength {
		return fmt.Errorf("event pattern is %d characters long, more than %d", len(p), MaxEventTypeLength)
	}
	if p == "*" {
		return nil
	}
	if prefix, ok := strings.CutSuffix(p, ".*"); ok && isEventType(prefix) {
		return nil
	}
	if isEventType(p) {
		return nil
	}
	return fmt.Errorf("%q is not a valid event pattern (an exact type such as \"task.created\", a prefix wildcard such as \"task.*\", or \"*\")", p)
}

// isEventType implements ^[a-z0-9_]+(\.[a-z0-9_]+)*$ without a regexp: the relay calls
// it for every ingested event.
func isEventType(s string) bool {
	segment := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
			segment++
		case c == '.' && segment > 0:
			segment = 0
		default:
			return false
		}
	}
	return segment > 0
}

// MatchEvent reports whether an event type matches a pattern: "*" matches everything,
// "task.*" matches every type below "task." ("task.created", "task.a.b") but neither
// "task" itself nor "taskx.y", and any other pattern matches only itself. The pattern
// is assumed to have passed ValidEventPattern.
func MatchEvent(pattern, eventType string) bool {
	if pattern == "*" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok && strings.HasSuffix(prefix, ".") {
		return len(eventType) > len(prefix) && strings.HasPrefix(eventType, prefix)
	}
	return pattern == eventType
}

func validHeaderName(name string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("%q is not a valid HTTP header name", name)
	}
	if IsReservedHeader(name) {
		return fmt.Errorf("%q is reserved: the relay sets it or it is a hop-by-hop header", name)
	}
	return nil
}

// validSecret checks the exactly-one-of rule. A literal value is checked as a header
// value without quoting it, since it may be a credential.
func validSecret(value, secretKey string) error {
	switch {
	case value != "" && secretKey != "":
		return errors.New("exactly one of value and secretKey must be set, not both")
	case value == "" && secretKey == "":
		return errors.New("exactly one of value and secretKey must be set")
	case secretKey != "":
		if msgs := validation.IsConfigMapKey(secretKey); len(msgs) > 0 {
			return fmt.Errorf("secretKey %q is not a valid Secret key: %s", secretKey, strings.Join(msgs, "; "))
		}
	case !httpguts.ValidHeaderFieldValue(value):
		return errors.New("value is not a valid HTTP header value (control characters or a line break)")
	}
	return nil
}

func inRange(d, lo, hi time.Duration) error {
	if d < lo || d > hi {
		return fmt.Errorf("%s is outside %s..%s", Duration{d}, Duration{lo}, Duration{hi})
	}
	return nil
}
