// Package signing signs webhook deliveries the way the Standard Webhooks specification
// (https://www.standardwebhooks.com) describes, so that a receiver can check them with any
// of that specification's libraries or with the few lines of Verify.
//
// A delivery carries three headers: webhook-id (the delivery id, the same on every retry),
// webhook-timestamp (the attempt time in unix seconds) and webhook-signature, a
// space-separated list of "v1,<base64 HMAC-SHA256>" entries over "id.timestamp.body", one
// per secret. Signing with the current and the previous secret during a rotation lets
// receivers switch keys without a window in which deliveries fail.
//
// Secrets are given either as "whsec_" followed by the standard base64 of the key (the
// specification's serialization) or as the raw key bytes. The Standard Webhooks libraries
// read a secret without the prefix as base64, not as raw bytes: a receiver of a raw secret
// R must be configured with "whsec_" + base64(R).
package signing

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names of the specification. They are lower case as the specification writes
// them; http.Header canonicalizes them on Set and Get.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

const (
	// MinSecretBytes is the shortest key accepted, in either form. The specification asks
	// for at least 24 random bytes (192 bits): a shorter key, or a short password typed as
	// one, brings an offline guess of the key from one signed delivery within reach.
	MinSecretBytes = 24

	// DefaultTolerance is how far a delivery's timestamp may be from the receiver's clock
	// before Verify refuses it. Five minutes is what the specification's reference
	// libraries use: wide enough for ordinary clock skew and a slow network, narrow
	// enough that a captured request cannot be replayed for long.
	DefaultTolerance = 5 * time.Minute

	// secretPrefix marks the base64 serialization of a secret (the specification's
	// "whsec_"), which lets a key that is itself text be told apart from an encoded one.
	secretPrefix = "whsec_"

	// signatureVersion identifies HMAC-SHA256 signatures; other versions (v1a is
	// ed25519) may share the header and are skipped by Verify.
	signatureVersion = "v1"

	// redacted is printed wherever a Secret's value could otherwise appear.
	redacted = "[redacted]"
)

// Secret is an HMAC key for signing deliveries. Its value never prints: String, Format
// (every fmt verb), GoString, MarshalJSON, MarshalLog (logr) and LogValue (slog) all
// show "[redacted]", and no error of this package contains it.
//
// The zero Secret holds no key and shows as "[unset]" instead. Sign skips it and Verify
// refuses it.
type Secret struct {
	// key returns the key bytes, which callers must not modify. A closure rather than a
	// slice or pointer because fmt prints a Secret nested in an unexported field by
	// reflection, without calling the methods above, and shows a slice's bytes (and, for
	// %s or %q, a pointer's target too); of a func it can show only the address.
	key func() []byte
}

// ParseSecret reads a secret as "whsec_<standard base64 of the key>" or, without the
// prefix, as the raw key bytes. Either way the key must be at least MinSecretBytes long.
// Surrounding whitespace is ignored in the whsec_ form only, because a Kubernetes Secret
// written with echo or from a file often ends in a newline; raw bytes are used exactly as
// given. Errors name the rule that failed, never the secret.
func ParseSecret(b []byte) (Secret, error) {
	if s, ok := bytes.CutPrefix(bytes.TrimSpace(b), []byte(secretPrefix)); ok {
		k := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
		n, err := base64.StdEncoding.Decode(k, s)
		if err != nil {
			// The decoder's error is dropped: all it adds is an offset into the secret.
			return Secret{}, errors.New("parse signing secret: the part after " + secretPrefix + " is not standard base64")
		}
		if n < MinSecretBytes {
			return Secret{}, fmt.Errorf("parse signing secret: %s key decodes to %d bytes, want at least %d",
				secretPrefix, n, MinSecretBytes)
		}
		k = k[:n]
		return Secret{key: func() []byte { return k }}, nil
	}
	if len(b) < MinSecretBytes {
		return Secret{}, fmt.Errorf("parse signing secret: raw key is %d bytes, want at least %d (or %s<base64>)",
			len(b), MinSecretBytes, secretPrefix)
	}
	// Copied so that a caller reusing its buffer cannot change the key under a signer.
	k := bytes.Clone(b)
	return Secret{key: func() []byte { return k }}, nil
}

func (s Secret) isZero() bool { return s.key == nil }

// String describes s without its value.
func (s Secret) String() string {
	if s.isZero() {
		return "[unset]"
	}
	return redacted
}

// Format prints String for every verb; %+v and %#v would otherwise print the fields.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// GoString is what %#v would print without Format; it is kept so that code calling it
// directly cannot see the key either.
func (s Secret) GoString() string { return s.String() }

// MarshalJSON writes String as a JSON string, so a Secret inside a struct that is dumped
// as JSON stays hidden.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// MarshalLog is what logr sinks log instead of the struct.
func (s Secret) MarshalLog() any { return s.String() }

// LogValue is what log/slog logs instead of the struct.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Headers are the Standard Webhooks headers of one delivery attempt.
type Headers struct {
	// ID is the webhook-id value: the delivery id.
	ID string
	// Timestamp is the webhook-timestamp value: the attempt time in unix seconds.
	Timestamp string
	// Signature is the webhook-signature value: one "v1,<base64>" per secret, separated
	// by spaces.
	Signature string
}

// Sign signs one attempt of delivery id at ts with each of secrets, in order: the
// current secret first, then the previous one while a rotation overlaps. Zero Secrets are
// skipped so that an unset previous secret can be passed as is. ts is truncated to whole
// seconds, which is all the header carries.
//
// The specification forbids a "." in id: the signed content is dot-delimited, so a dot
// would let a different id, timestamp and body produce the same signed bytes. Sign does
// not check it because callers choose the ids; the relay's delivery ids are alphanumeric.
func Sign(id string, ts time.Time, body []byte, secrets ...Secret) Headers {
	h := Headers{ID: id, Timestamp: strconv.FormatInt(ts.Unix(), 10)}
	sigs := make([]string, 0, len(secrets))
	for _, s := range secrets {
		if s.isZero() {
			continue
		}
		sigs = append(sigs, signatureVersion+","+mac(s, h.ID, h.Timestamp, body))
	}
	h.Signature = strings.Join(sigs, " ")
	return h
}

// Apply sets the three headers on hdr, replacing any earlier values.
func (h Headers) Apply(hdr http.Header) {
	hdr.Set(HeaderID, h.ID)
	hdr.Set(HeaderTimestamp, h.Timestamp)
	hdr.Set(HeaderSignature, h.Signature)
}

// mac is the base64 HMAC-SHA256 of "id.timestamp.body" under s. The parts are written
// one after another rather than concatenated so that a large body is not copied.
func mac(s Secret, id, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, s.key())
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Errors of Verify, for errors.Is. A receiver usually answers all of them alike (401 or
// 400); telling them apart helps its logs.
var (
	// ErrMissingHeader: one of the three headers is absent or empty.
	ErrMissingHeader = errors.New("missing webhook header")
	// ErrBadTimestamp: webhook-timestamp is not a decimal number of unix seconds.
	ErrBadTimestamp = errors.New("webhook-timestamp is not unix seconds")
	// ErrTimestampOutOfTolerance: the timestamp is further from now than the tolerance,
	// so the request may be a replay.
	ErrTimestampOutOfTolerance = errors.New("webhook-timestamp outside tolerance")
	// ErrNoMatchingSignature: no v1 signature in webhook-signature matches the secret.
	ErrNoMatchingSignature = errors.New("no matching v1 signature")
)

// Verify checks a received delivery the way a receiver should: the three headers are
// present, the timestamp is within tolerance of now (either side, to refuse replays and
// requests dated in the future), and at least one v1 entry of webhook-signature equals
// the HMAC of the body under secret, compared in constant time. A tolerance of zero or
// less is refused rather than read as "no limit", because dropping the timestamp check
// silently would allow replays; use DefaultTolerance unless there is a reason not to.
//
// body must be the request body exactly as received: re-encoded JSON differs in
// whitespace or key order and will not verify.
func Verify(secret Secret, hdr http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if secret.isZero() {
		return errors.New("verify webhook: secret is unset")
	}
	if tolerance <= 0 {
		return fmt.Errorf("verify webhook: tolerance %v is not positive", tolerance)
	}
	id, ts, sig := hdr.Get(HeaderID), hdr.Get(HeaderTimestamp), hdr.Get(HeaderSignature)
	for _, h := range []struct{ name, value string }{{HeaderID, id}, {HeaderTimestamp, ts}, {HeaderSignature, sig}} {
		if h.value == "" {
			return fmt.Errorf("verify webhook: %w %s", ErrMissingHeader, h.name)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("verify webhook %q: %w: %q", id, ErrBadTimestamp, ts)
	}
	if skew := now.Sub(time.Unix(sec, 0)); skew > tolerance || skew < -tolerance {
		return fmt.Errorf("verify webhook %q: %w: %v from now, tolerance %v", id, ErrTimestampOutOfTolerance, skew.Round(time.Second), tolerance)
	}
	// The signed timestamp is the header's text, not sec re-formatted: "+1614265330" or
	// "01614265330" parse to the same second but were not what the sender signed.
	want := []byte(mac(secret, id, ts, body))
	for _, entry := range strings.Fields(sig) {
		version, got, ok := strings.Cut(entry, ",")
		if ok && version == signatureVersion && hmac.Equal([]byte(got), want) {
			return nil
		}
	}
	return fmt.Errorf("verify webhook %q: %w", id, ErrNoMatchingSignature)
}
