package event

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// timestampPattern is the RFC 3339 profile of ISO 8601 that Involveo uses, plus the producer's
// quirk of appending "Z" after a numeric offset. ISO 8601's other forms (basic format, comma
// decimals, week dates, no offset) are refused: none is sent today, and a time without an
// offset does not name an instant. RFC 3339 §5.6 lets "T" and "Z" be lowercase. The fraction
// stops at nine digits because time.Time cannot hold more and would round silently.
var timestampPattern = regexp.MustCompile(
	`^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-](\d{2}):(\d{2})[Zz]?)$`)

// ParseTimestamp parses an event timestamp such as "2025-07-28T13:15:40Z",
// "2025-07-28T16:15:40.507+03:00" or the producer's "2025-07-28T13:15:40.507707+00:00Z".
// In the quirk the numeric offset wins and the trailing "Z" is ignored: it is what Python's
// isoformat() writes with a "Z" concatenated after it, so the offset is the one that was
// computed and the "Z" is decoration.
func ParseTimestamp(s string) (time.Time, error) {
	m := timestampPattern.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, fmt.Errorf("timestamp %q is not ISO 8601 like 2025-07-28T13:15:40Z", s)
	}
	// time.Parse accepts offsets such as +24:00 and +00:60, which RFC 3339 does not.
	if m[1] != "" && (m[1] > "23" || m[2] > "59") {
		return time.Time{}, fmt.Errorf("timestamp %q has an offset out of range", s)
	}
	norm := strings.ToUpper(s)
	if m[1] != "" {
		norm = strings.TrimSuffix(norm, "Z")
	}
	t, err := time.Parse(time.RFC3339Nano, norm)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q: %w", s, err)
	}
	return t, nil
}
