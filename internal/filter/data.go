package filter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// DecodeData decodes the data object of an event body (the whole {event, timestamp, data}
// JSON) into the form Eval takes: JSON objects become map[string]any, arrays []any, and
// numbers int64 when written as an integer that fits, float64 otherwise. Integers stay
// integers so that data.count == 3, data.count + 1 and list indexes behave as a reader of the
// JSON expects; CEL compares int and double values by number, so data.score > 4.5 works on
// either. A number too large for a float64 becomes ±Inf rather than failing the event.
//
// The relay calls it once per event and passes the result to every matching filter; Eval
// does not modify it, so it can be shared by concurrent evaluations.
func DecodeData(raw []byte) (any, error) {
	// Decoding the envelope as a map, not a struct, keeps the key match exact ("data" only,
	// the last one winning), as in the event package's validation.
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var body map[string]any
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("decode event data: %w", err)
	}
	d, ok := body["data"]
	if !ok {
		return nil, errors.New("decode event data: the body has no data field")
	}
	data, ok := d.(map[string]any)
	if !ok {
		return nil, errors.New("decode event data: data is not an object")
	}
	convertNumbers(data)
	return data, nil
}

// convertNumbers replaces, in place, every json.Number under v with an int64 or float64.
func convertNumbers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = convertNumbers(e)
		}
	case []any:
		for i, e := range v {
			v[i] = convertNumbers(e)
		}
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return i
		}
		// The decoder has checked the syntax, so the only possible error is ErrRange, for
		// which ParseFloat still returns the nearest value (±Inf or 0).
		f, _ := strconv.ParseFloat(string(v), 64)
		return f
	}
	return v
}
