// Package event validates the events Involveo sends by webhook: the {event, timestamp, data}
// envelope and, for the event types Involveo documents, the shape of data. It never rewrites
// an event: subscribers get the bytes Involveo sent.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"unicode/utf8"
)

// MaxTypeLength bounds the event type. Types travel in a header (X-Involveo-Event), metric
// labels and subject names, and real ones are a few dozen characters, so a longer one is an
// error rather than a name.
const MaxTypeLength = 128

// typePattern is the dotted lowercase form of Involveo's event names (task.status_changed).
// It keeps types safe to use verbatim as a header value, a label and a queue subject.
var typePattern = regexp.MustCompile(`^[a-z0-9_]+(\.[a-z0-9_]+)*$`)

// Envelope is a validated event.
type Envelope struct {
	// Type is the "event" field, e.g. "task.published".
	Type string
	// Timestamp is the "timestamp" field exactly as sent, producer quirks included, so it can
	// be passed on unchanged; ParseTimestamp reads it.
	Timestamp string
	// Raw is the request body as received, which is what subscribers must get: re-encoding
	// would change key order, escaping and the spelling of numbers. Parse does not copy it, so
	// it shares memory with the body given to Parse.
	Raw []byte
}

// Known reports whether the event's type has a data schema, that is, whether Parse checked
// data beyond it being an object.
func (e *Envelope) Known() bool {
	_, ok := schemas[e.Type]
	return ok
}

// KnownTypes returns the event types that have a data schema, sorted.
func KnownTypes() []string {
	return slices.Sorted(maps.Keys(schemas))
}

// ValidationError names the first part of a body that is not a valid event.
type ValidationError struct {
	// Field is the JSON path of the offending value, such as "timestamp" or
	// "data.task.tags[2]", or "body" when the body is not a JSON object at all.
	Field string
	// Message says what the value must be, such as "is required" or "must be a string".
	Message string
}

func (e *ValidationError) Error() string {
	return e.Field + ": " + e.Message
}

// Parse validates body as one Involveo event and returns its envelope. Problems are reported
// as a *ValidationError for the first one found: the body itself, then event, timestamp and
// data, then the fields of data in schema order. Unknown keys are allowed everywhere, and an
// event type with no schema only needs data to be an object.
func Parse(body []byte) (*Envelope, error) {
	obj, verr := decodeObject(body)
	if verr != nil {
		return nil, verr
	}
	typ, verr := eventType(obj)
	if verr != nil {
		return nil, verr
	}
	ts, ok := obj["timestamp"]
	if !ok {
		return nil, &ValidationError{Field: "timestamp", Message: "is required"}
	}
	timestamp, _ := ts.(string)
	if _, err := ParseTimestamp(timestamp); err != nil {
		return nil, &ValidationError{Field: "timestamp", Message: "must be an ISO-8601 timestamp"}
	}
	d, ok := obj["data"]
	if !ok {
		return nil, &ValidationError{Field: "data", Message: "is required"}
	}
	data, ok := d.(map[string]any)
	if !ok {
		return nil, &ValidationError{Field: "data", Message: "must be an object"}
	}
	if s, ok := schemas[typ]; ok {
		if verr := s.validate("data", data); verr != nil {
			return nil, verr
		}
	}
	return &Envelope{Type: typ, Timestamp: timestamp, Raw: body}, nil
}

// decodeObject decodes body as exactly one JSON object. Numbers stay json.Number: nothing
// here reads them, and decoding into float64 would refuse valid JSON such as 1e400.
func decodeObject(body []byte) (map[string]any, *ValidationError) {
	// encoding/json quietly replaces invalid UTF-8 with U+FFFD, so such a body would validate
	// and then be relayed with bytes that are not JSON (RFC 8259 §8.1).
	if !utf8.Valid(body) {
		return nil, &ValidationError{Field: "body", Message: "must be UTF-8 encoded JSON"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ValidationError{Field: "body", Message: "must be a JSON object, not an empty body"}
		}
		return nil, &ValidationError{Field: "body", Message: "must be valid JSON: " + err.Error()}
	}
	// Anything after the object would be relayed too, and receivers would choke on it.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Field: "body", Message: "must be a single JSON object with nothing after it"}
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, &ValidationError{Field: "body", Message: "must be a JSON object"}
	}
	return obj, nil
}

func eventType(obj map[string]any) (string, *ValidationError) {
	v, ok := obj["event"]
	if !ok {
		return "", &ValidationError{Field: "event", Message: "is required"}
	}
	typ, ok := v.(string)
	switch {
	case !ok:
		return "", &ValidationError{Field: "event", Message: "must be a string"}
	case typ == "":
		return "", &ValidationError{Field: "event", Message: "must not be empty"}
	case len(typ) > MaxTypeLength:
		return "", &ValidationError{Field: "event", Message: "must be at most " + strconv.Itoa(MaxTypeLength) + " characters"}
	case !typePattern.MatchString(typ):
		return "", &ValidationError{Field: "event", Message: "must be a dotted lowercase name such as task.created"}
	}
	return typ, nil
}
