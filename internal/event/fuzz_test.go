package event

import (
	"bytes"
	"errors"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, body := range seedFixtures(f) {
		f.Add(body)
	}
	for _, body := range []string{
		``,
		`[]`,
		`{"event":"task.created","timestamp":"2025-07-28T13:15:40.507707+00:00Z"` + "\n" + `"data":{}}`,
		envelope("task.status_changed", `{"task":{"tags":[1]},"status_before":"a"}`),
		envelope("task.created", taskData(okTask, `{"type":"internal","email":null}`)),
		envelope("x.y", `{"n":1e400}`) + ` {}`,
		"{\"event\":\"\xc3\x28\"}",
	} {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in := bytes.Clone(body)
		env, err := Parse(body)
		if err != nil {
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error %v is %T, want *ValidationError", err, err)
			}
			if verr.Field == "" || verr.Message == "" {
				t.Fatalf("error %#v has an empty Field or Message", verr)
			}
			return
		}
		if !bytes.Equal(env.Raw, in) || !bytes.Equal(body, in) {
			t.Fatalf("Raw %q differs from the input %q", env.Raw, in)
		}
		if env.Type == "" {
			t.Fatalf("accepted %q with an empty Type", in)
		}
		if _, err := ParseTimestamp(env.Timestamp); err != nil {
			t.Fatalf("accepted timestamp %q that ParseTimestamp refuses: %v", env.Timestamp, err)
		}
	})
}
