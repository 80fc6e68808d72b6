// Package routing is the routing table shared by the two planes: the manager renders it
// (Render, EncodeConfigMap) into the ConfigMap and credentials Secret it keeps in the
// operator namespace, and the relay loads it (FileSource, KubernetesSource), compiles it
// (Compile) and matches every ingested event against it (Routes.Match).
//
// The table is the one typed contract between the planes: neither side parses the
// other's YAML by hand. Secret values never appear in the table the manager renders;
// subscriptions name keys of the credentials Secret instead, and Compile resolves them.
package routing

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// CurrentVersion is the schema version this package writes and the only one it reads.
// A relay refuses a table with a version it does not know rather than misread it, so a
// newer manager cannot silently change the meaning of fields under an older relay.
const CurrentVersion = 1

// Names of the in-cluster objects and their keys (DESIGN §4b, contract).
const (
	// ConfigMapName is the routing ConfigMap in the operator namespace.
	ConfigMapName = "webhook-relay-routes"
	// CredentialsSecretName is the Secret holding every value a subscription refers to
	// by secretKey (API keys and secret header values).
	CredentialsSecretName = "webhook-relay-credentials"
	// RoutesKey is the ConfigMap data key of the plain YAML table.
	RoutesKey = "routes.yaml"
	// RoutesGzipKey is the ConfigMap binaryData key of the gzip-compressed table, used
	// instead of RoutesKey when the plain table is larger than GzipThreshold.
	RoutesGzipKey = "routes.yaml.gz"
)

// Defaults of the Involveo webhook contract (the seed document): a per-attempt timeout
// of 30 seconds and up to 3 retries 3 minutes apart after the first attempt.
const (
	DefaultTimeout    = 30 * time.Second
	DefaultMaxRetries = 3
	DefaultInterval   = 3 * time.Minute
)

// Bounds on the delivery settings. They reject values that are certainly mistakes
// ("30ms", "300h") while leaving clients room to agree on slower endpoints or longer
// outages than the contract's defaults.
const (
	// MinTimeout: below a second a TLS handshake to a remote endpoint routinely fails.
	MinTimeout = time.Second
	// MaxTimeout: a delivery worker is held for the whole attempt; five minutes is
	// already generous for a webhook receiver.
	MaxTimeout = 5 * time.Minute
	// MaxMaxRetries keeps a dead endpoint from holding deliveries in the queue forever.
	MaxMaxRetries = 10
	// MinInterval keeps retries from hammering an endpoint that is already failing.
	MinInterval = time.Second
	// MaxInterval: with MaxMaxRetries retries a delivery gives up within ten days.
	MaxInterval = 24 * time.Hour
	// MaxMaxInFlight bounds per-subscription concurrency: beyond it one
	// subscription could hold the relay's whole worker pool.
	MaxMaxInFlight = 256
	// MaxRatePerSecond is far above what one endpoint takes from one relay.
	MaxRatePerSecond = 10000
	// MaxFilterLength bounds a filter expression, as the CRD does.
	MaxFilterLength = 4096
)

// Table is the routing table: every subscription the relay delivers to.
// It is serialised as YAML through its JSON tags (sigs.k8s.io/yaml), the same schema for
// the standalone --config file and the rendered ConfigMap (DESIGN §4, contract).
type Table struct {
	// Version is the schema version; 0 is read as CurrentVersion.
	Version int `json:"version,omitempty"`
	// Revision identifies the table's content. The manager sets it (see Render) so that
	// the relay can report which table it has loaded; in a standalone file it is
	// optional and any string.
	Revision string `json:"revision,omitempty"`
	// Subscriptions are the delivery targets, unique by ID.
	Subscriptions []Subscription `json:"subscriptions"`
}

// Subscription is one delivery target: where to POST which events, with which headers.
type Subscription struct {
	// ID is unique in the table; namespace/name of the WebhookSubscription in-cluster.
	ID string `json:"id"`
	// Generation is the WebhookSubscription's metadata.generation this entry was rendered
	// from, so the manager can confirm the relay has loaded that generation.
	Generation int64 `json:"generation,omitempty"`
	// URL is the absolute http(s) URL deliveries are POSTed to.
	URL string `json:"url"`
	// Events are the event patterns delivered: an exact type ("task.published"), a
	// trailing wildcard ("task.*") or "*" for every event.
	Events []string `json:"events"`
	// APIKey is sent as the X-Api-Key header.
	APIKey Secret `json:"apiKey"`
	// Headers are extra headers sent with every delivery.
	Headers []Header `json:"headers,omitempty"`
	// Timeout bounds each attempt; nil means DefaultTimeout.
	Timeout *Duration `json:"timeout,omitempty"`
	// Retry is the retry policy; nil means the contract's defaults.
	Retry *Retry `json:"retry,omitempty"`

	// Filter is a CEL expression over event, timestamp and data; only events
	// for which it is true are delivered. Empty delivers every matching event.
	Filter string `json:"filter,omitempty"`

	// Signing, when set, signs every delivery with Standard Webhooks headers.
	Signing *Signing `json:"signing,omitempty"`

	// MaxInFlight caps concurrent attempts to this subscription on one relay;
	// 0 means the relay's --max-in-flight-per-subscription.
	MaxInFlight int `json:"maxInFlight,omitempty"`

	// RatePerSecond caps attempts per second on one relay; 0 means no limit.
	RatePerSecond float64 `json:"ratePerSecond,omitempty"`
}

// Signing holds the signing secret and, during a rotation, the previous one:
// both sign every delivery until the previous one is removed, so receivers can
// switch keys without a gap.
type Signing struct {
	Secret   Secret  `json:"secret"`
	Previous *Secret `json:"previous,omitempty"`
}

// Secret is a value given either literally or as a key of the credentials file/Secret.
// Exactly one of the two is set.
type Secret struct {
	// Value is the literal value; meant for standalone files only.
	Value string `json:"value,omitempty"`
	// SecretKey is a key of the credentials file or Secret holding the value.
	SecretKey string `json:"secretKey,omitempty"`
}

// Header is an extra HTTP header with a literal value or one from the credentials.
// Exactly one of Value and SecretKey is set.
type Header struct {
	// Name is the header name, a valid HTTP token that is not in ReservedHeaders.
	Name string `json:"name"`
	// Value is the literal header value.
	Value string `json:"value,omitempty"`
	// SecretKey is a key of the credentials file or Secret holding the value.
	SecretKey string `json:"secretKey,omitempty"`
}

// Retry is a subscription's retry policy. The fields are pointers so that an explicit
// zero ("maxRetries: 0", deliver once) is told apart from "use the default".
type Retry struct {
	// MaxRetries is the number of retries after the first attempt; nil means
	// DefaultMaxRetries.
	MaxRetries *int `json:"maxRetries,omitempty"`
	// Interval is the wait between attempts; nil means DefaultInterval.
	Interval *Duration `json:"interval,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("30s", "3m").
// It is a pointer in the schema so that an explicit "0s" is rejected by validation
// instead of silently meaning "default".
type Duration struct {
	time.Duration
}

// NewDuration returns a *Duration for d, for building tables in code.
func NewDuration(d time.Duration) *Duration { return &Duration{Duration: d} }

// String formats d in its shortest Go form: "3m" rather than time.Duration's "3m0s", so
// that rendered tables read like the files people write.
func (d Duration) String() string {
	s := d.Duration.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}

// UnmarshalJSON reads a Go duration string. Ranges are checked by Validate, which knows
// the field's name.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\" or \"3m\": %w", err)
	}
	parsed, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = parsed
	return nil
}

// redacted replaces secret values wherever a value could reach a log line.
const redacted = "[redacted]"

// String describes s without its literal value, so that logging a Subscription cannot
// leak a key.
func (s Secret) String() string {
	if s.SecretKey != "" {
		return "secretKey:" + s.SecretKey
	}
	if s.Value != "" {
		return "value:" + redacted
	}
	return "unset"
}

// Format prints String for every verb (including %#v and %+v, which would otherwise
// print the value field by field).
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// MarshalLog is what logr sinks log instead of the struct.
func (s Secret) MarshalLog() any { return s.String() }

// LogValue is what log/slog logs instead of the struct.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// String describes h without its value: a literal header value is as likely to be a
// credential (Authorization) as not.
func (h Header) String() string {
	return h.Name + ": " + Secret{Value: h.Value, SecretKey: h.SecretKey}.String()
}

// Format prints String for every verb.
func (h Header) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(h.String())) }

// MarshalLog is what logr sinks log instead of the struct.
func (h Header) MarshalLog() any { return h.String() }

// LogValue is what log/slog logs instead of the struct.
func (h Header) LogValue() slog.Value { return slog.StringValue(h.String()) }

// String describes s without secrets: literal values are hidden and so are the URL's
// user info and query, which often carry tokens.
func (s Subscription) String() string {
	return fmt.Sprintf("subscription %s (generation %d) → %s events=%v apiKey=%s headers=%v",
		s.ID, s.Generation, redactURLString(s.URL), s.Events, s.APIKey, s.Headers)
}

// Format prints String for every verb.
func (s Subscription) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// MarshalLog is what logr sinks log instead of the struct.
func (s Subscription) MarshalLog() any { return s.String() }

// LogValue is what log/slog logs instead of the struct.
func (s Subscription) LogValue() slog.Value { return slog.StringValue(s.String()) }
