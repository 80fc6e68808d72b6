package event

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The fixtures in testdata are the seed document's examples (seed/000_90e43f77f818e0a3.txt).
// The seed's own snippets are not valid JSON (trailing commas, a missing comma after
// "timestamp", a comment in place of data), so the fixtures fix exactly that, and build the
// three events without a full example from the seed's task and user examples. The seed file
// itself is UTF-8 that was once read as Mac Roman; the fixtures hold the Russian text as
// Involveo wrote it, recovered byte for byte.
func seedFixtures(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no fixtures in testdata")
	}
	fixtures := make(map[string][]byte, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fixtures[strings.TrimSuffix(filepath.Base(p), ".json")] = b
	}
	return fixtures
}

func TestParse_AcceptsEverySeedExample(t *testing.T) {
	fixtures := seedFixtures(t)
	for _, typ := range KnownTypes() {
		t.Run(typ, func(t *testing.T) {
			body, ok := fixtures[typ]
			if !ok {
				t.Fatalf("no fixture testdata/%s.json", typ)
			}
			want := bytes.Clone(body)
			env, err := Parse(body)
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if env.Type != typ {
				t.Errorf("Type = %q, want %q", env.Type, typ)
			}
			if env.Timestamp != "2025-07-28T13:15:40.507707+00:00Z" {
				t.Errorf("Timestamp = %q, want the seed's string unchanged", env.Timestamp)
			}
			if !bytes.Equal(env.Raw, want) {
				t.Errorf("Raw differs from the input bytes")
			}
			if !env.Known() {
				t.Errorf("Known() = false for a documented type")
			}
		})
	}
}

func TestParse_KeepsRussianTextAsSent(t *testing.T) {
	body := seedFixtures(t)["task.status_changed"]
	env, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"status_after": "Готово"`, `"company": "ООО Пижульки"`} {
		if !bytes.Contains(env.Raw, []byte(s)) {
			t.Errorf("Raw lost %s", s)
		}
	}
}

// Minimal valid parts for building bodies by hand.
const (
	okTimestamp = `"2025-07-28T13:15:40Z"`
	okTask      = `{"title":"t","content":"c","status":"s","tags":["a"],"time_create":"2025-07-28T13:15:40Z","email":null}`
	okInternal  = `{"type":"internal","email":"a@example.com","name":"Иван","company":null,"custom_fields":{}}`
	okSSO       = `{"type":"sso","custom_fields":{"id":"u1"}}`
)

func envelope(event, data string) string {
	return `{"event":"` + event + `","timestamp":` + okTimestamp + `,"data":` + data + `}`
}

func taskData(task, user string) string {
	return `{"task":` + task + `,"user":` + user + `}`
}

func statusData(extra string) string {
	return `{"task":` + okTask + `,"user":` + okSSO + extra + `}`
}

func TestParse_AcceptsValidVariants(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantType  string
		wantKnown bool
	}{
		{
			name:      "accepts an sso user with any claims",
			body:      envelope("task.created", taskData(okTask, `{"type":"sso","custom_fields":{"id":7,"roles":["a"],"nested":{"x":null}}}`)),
			wantType:  "task.created",
			wantKnown: true,
		},
		{
			name:      "accepts an internal user whose name and company are null",
			body:      envelope("task.published", taskData(okTask, `{"type":"internal","email":"a@b.c","name":null,"company":null,"custom_fields":{}}`)),
			wantType:  "task.published",
			wantKnown: true,
		},
		{
			name:      "accepts an internal user without name, company and custom_fields",
			body:      envelope("task.published", taskData(okTask, `{"type":"internal","email":"a@b.c"}`)),
			wantType:  "task.published",
			wantKnown: true,
		},
		{
			name:      "accepts a task whose email is a string",
			body:      envelope("task.deleted", taskData(strings.Replace(okTask, `"email":null`, `"email":"anon@example.com"`, 1), okSSO)),
			wantType:  "task.deleted",
			wantKnown: true,
		},
		{
			name:      "accepts a task without email",
			body:      envelope("task.deleted", taskData(strings.Replace(okTask, `,"email":null`, ``, 1), okSSO)),
			wantType:  "task.deleted",
			wantKnown: true,
		},
		{
			name:      "accepts a task with no tags",
			body:      envelope("task.created", taskData(strings.Replace(okTask, `["a"]`, `[]`, 1), okInternal)),
			wantType:  "task.created",
			wantKnown: true,
		},
		{
			name:      "accepts unknown fields at every level",
			body:      `{"event":"task.created","id":1,"timestamp":` + okTimestamp + `,"data":{"extra":[1],"task":{"title":"t","content":"c","status":"s","tags":[],"time_create":"2025-07-28T13:15:40Z","votes":3},"user":{"type":"sso","custom_fields":{},"avatar":null}}}`,
			wantType:  "task.created",
			wantKnown: true,
		},
		{
			name:      "accepts a status change",
			body:      envelope("task.status_changed", statusData(`,"status_before":"Создан","status_after":"Готово"`)),
			wantType:  "task.status_changed",
			wantKnown: true,
		},
		{
			name:     "accepts an unknown event type with any data object",
			body:     envelope("comment.created", `{"comment":{"text":1}}`),
			wantType: "comment.created",
		},
		{
			name:     "accepts an unknown task event without checking data",
			body:     envelope("task.voted", `{}`),
			wantType: "task.voted",
		},
		{
			name:     "accepts a single-word event type with digits and underscores",
			body:     envelope("ping_2", `{}`),
			wantType: "ping_2",
		},
		{
			name:     "accepts an event type of exactly the maximum length",
			body:     envelope(strings.Repeat("a", MaxTypeLength), `{}`),
			wantType: strings.Repeat("a", MaxTypeLength),
		},
		{
			name:     "accepts whitespace around the object",
			body:     "\n\t " + envelope("x.y", `{}`) + "\r\n ",
			wantType: "x.y",
		},
		{
			name:     "accepts numbers that do not fit a float64",
			body:     envelope("x.y", `{"n":1e400}`),
			wantType: "x.y",
		},
		{
			name:      "accepts escaped characters in strings",
			body:      `{"event":"task\u002ecreated","timestamp":` + okTimestamp + `,"data":{"task":{"title":"\"\u0418\"","content":"","status":"","tags":["\n"],"time_create":"2025-07-28T13:15:40Z"},"user":` + okSSO + `}}`,
			wantType:  "task.created",
			wantKnown: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Parse([]byte(tt.body))
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if env.Type != tt.wantType {
				t.Errorf("Type = %q, want %q", env.Type, tt.wantType)
			}
			if env.Known() != tt.wantKnown {
				t.Errorf("Known() = %v, want %v", env.Known(), tt.wantKnown)
			}
			if string(env.Raw) != tt.body {
				t.Errorf("Raw = %q, want the input", env.Raw)
			}
		})
	}
}

func TestParse_RejectsInvalidBodies(t *testing.T) {
	tooLong := strings.Repeat("a", MaxTypeLength+1)
	tests := []struct {
		name string
		body string
		// wantField is the exact path; wantMessage is a prefix, because the message for
		// malformed JSON ends with encoding/json's own description.
		wantField   string
		wantMessage string
	}{
		{"rejects an empty body", ``, "body", "must be a JSON object, not an empty body"},
		{"rejects a body of only whitespace", " \n", "body", "must be a JSON object, not an empty body"},
		{"rejects malformed JSON", `{"event":`, "body", "must be valid JSON: "},
		{"rejects the seed's snippet with trailing commas", `{"event":"a","timestamp":"2025-07-28T13:15:40Z","data":{},}`, "body", "must be valid JSON: "},
		{"rejects invalid UTF-8", "{\"event\":\"a\xff\"}", "body", "must be UTF-8 encoded JSON"},
		{"rejects an array body", `[` + envelope("a", `{}`) + `]`, "body", "must be a JSON object"},
		{"rejects a string body", `"task.created"`, "body", "must be a JSON object"},
		{"rejects a null body", `null`, "body", "must be a JSON object"},
		{"rejects a second object after the first", envelope("a", `{}`) + ` {}`, "body", "must be a single JSON object with nothing after it"},
		{"rejects garbage after the object", envelope("a", `{}`) + `x`, "body", "must be a single JSON object with nothing after it"},
		{"rejects a missing event", `{"timestamp":` + okTimestamp + `,"data":{}}`, "event", "is required"},
		{"reports event before timestamp and data", `{}`, "event", "is required"},
		{"rejects a numeric event", `{"event":1,"timestamp":` + okTimestamp + `,"data":{}}`, "event", "must be a string"},
		{"rejects a null event", `{"event":null,"timestamp":` + okTimestamp + `,"data":{}}`, "event", "must be a string"},
		{"rejects an empty event", envelope("", `{}`), "event", "must not be empty"},
		{"rejects an event longer than the limit", envelope(tooLong, `{}`), "event", "must be at most 128 characters"},
		{"rejects an uppercase event", envelope("Task.Created", `{}`), "event", "must be a dotted lowercase name such as task.created"},
		{"rejects an event with an empty segment", envelope("task..created", `{}`), "event", "must be a dotted lowercase name such as task.created"},
		{"rejects an event with a trailing dot", envelope("task.", `{}`), "event", "must be a dotted lowercase name such as task.created"},
		{"rejects an event with a wildcard", envelope("task.*", `{}`), "event", "must be a dotted lowercase name such as task.created"},
		{"rejects an event with a space", envelope("task created", `{}`), "event", "must be a dotted lowercase name such as task.created"},
		{"rejects a missing timestamp", `{"event":"a","data":{}}`, "timestamp", "is required"},
		{"rejects a numeric timestamp", `{"event":"a","timestamp":1753708540,"data":{}}`, "timestamp", "must be an ISO-8601 timestamp"},
		{"rejects a timestamp without an offset", `{"event":"a","timestamp":"2025-07-28T13:15:40","data":{}}`, "timestamp", "must be an ISO-8601 timestamp"},
		{"rejects a missing data", `{"event":"a","timestamp":` + okTimestamp + `}`, "data", "is required"},
		{"rejects a null data", envelope("a", `null`), "data", "must be an object"},
		{"rejects an array data", envelope("a", `[]`), "data", "must be an object"},
		{"rejects a missing task", envelope("task.created", `{"user":`+okSSO+`}`), "data.task", "is required"},
		{"rejects a task that is a string", envelope("task.created", taskData(`"x"`, okSSO)), "data.task", "must be an object"},
		{"rejects a task without title", envelope("task.created", taskData(strings.Replace(okTask, `"title":"t",`, ``, 1), okSSO)), "data.task.title", "is required"},
		{"rejects a null title", envelope("task.created", taskData(strings.Replace(okTask, `"title":"t"`, `"title":null`, 1), okSSO)), "data.task.title", "must be a string"},
		{"rejects a numeric content", envelope("task.created", taskData(strings.Replace(okTask, `"content":"c"`, `"content":1`, 1), okSSO)), "data.task.content", "must be a string"},
		{"rejects a missing status", envelope("task.published", taskData(strings.Replace(okTask, `"status":"s",`, ``, 1), okSSO)), "data.task.status", "is required"},
		{"rejects tags given as a string", envelope("task.created", taskData(strings.Replace(okTask, `["a"]`, `"a"`, 1), okSSO)), "data.task.tags", "must be an array of strings"},
		{"rejects null tags", envelope("task.created", taskData(strings.Replace(okTask, `["a"]`, `null`, 1), okSSO)), "data.task.tags", "must be an array of strings"},
		{"rejects a tag that is not a string", envelope("task.created", taskData(strings.Replace(okTask, `["a"]`, `["a","b",3]`, 1), okSSO)), "data.task.tags[2]", "must be a string"},
		{"rejects a malformed time_create", envelope("task.created", taskData(strings.Replace(okTask, `"2025-07-28T13:15:40Z"`, `"28.07.2025"`, 1), okSSO)), "data.task.time_create", "must be an ISO-8601 timestamp"},
		{"rejects a numeric task email", envelope("task.created", taskData(strings.Replace(okTask, `"email":null`, `"email":1`, 1), okSSO)), "data.task.email", "must be a string or null"},
		{"reports the task before the user", envelope("task.created", taskData(`{}`, `{}`)), "data.task.title", "is required"},
		{"rejects a missing user", envelope("task.deleted", `{"task":`+okTask+`}`), "data.user", "is required"},
		{"rejects a user without type", envelope("task.created", taskData(okTask, `{"custom_fields":{}}`)), "data.user.type", "is required"},
		{"rejects an unknown user type", envelope("task.created", taskData(okTask, `{"type":"ldap","custom_fields":{}}`)), "data.user.type", `must be one of "internal", "sso"`},
		{"rejects a numeric user type", envelope("task.created", taskData(okTask, `{"type":1}`)), "data.user.type", `must be one of "internal", "sso"`},
		{"rejects an internal user without email", envelope("task.created", taskData(okTask, `{"type":"internal","name":null}`)), "data.user.email", "is required"},
		{"rejects an internal user whose email is null", envelope("task.created", taskData(okTask, `{"type":"internal","email":null}`)), "data.user.email", "must be a string"},
		{"rejects an internal user whose name is a number", envelope("task.created", taskData(okTask, `{"type":"internal","email":"a@b.c","name":5}`)), "data.user.name", "must be a string or null"},
		{"rejects an internal user whose company is an object", envelope("task.created", taskData(okTask, `{"type":"internal","email":"a@b.c","company":{}}`)), "data.user.company", "must be a string or null"},
		{"rejects internal custom_fields that are an array", envelope("task.created", taskData(okTask, `{"type":"internal","email":"a@b.c","custom_fields":[]}`)), "data.user.custom_fields", "must be an object"},
		{"rejects an sso user without custom_fields", envelope("task.created", taskData(okTask, `{"type":"sso","id":"u1"}`)), "data.user.custom_fields", "is required"},
		{"rejects sso custom_fields that are null", envelope("task.created", taskData(okTask, `{"type":"sso","custom_fields":null}`)), "data.user.custom_fields", "must be an object"},
		{"rejects a status change without status_before", envelope("task.status_changed", statusData(`,"status_after":"b"`)), "data.status_before", "is required"},
		{"rejects a status change with a numeric status_after", envelope("task.status_changed", statusData(`,"status_before":"a","status_after":2`)), "data.status_after", "must be a string"},
		{"reports the task before the statuses", envelope("task.status_changed", `{"user":`+okSSO+`}`), "data.task", "is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Parse([]byte(tt.body))
			if err == nil {
				t.Fatalf("Parse() = %+v, want an error", env)
			}
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error %v is %T, want *ValidationError", err, err)
			}
			if verr.Field != tt.wantField {
				t.Errorf("Field = %q, want %q (error %q)", verr.Field, tt.wantField, err)
			}
			if !strings.HasPrefix(verr.Message, tt.wantMessage) {
				t.Errorf("Message = %q, want it to start with %q", verr.Message, tt.wantMessage)
			}
		})
	}
}

func TestParse_ReportsTheSameErrorEveryTime(t *testing.T) {
	// Several problems at once, in maps that Go iterates in random order.
	body := []byte(envelope("task.status_changed", `{"task":{"tags":[1],"title":2},"user":{"type":"x"},"status_after":3}`))
	first, err := Parse(body)
	if err == nil {
		t.Fatalf("Parse() = %+v, want an error", first)
	}
	for range 50 {
		_, again := Parse(body)
		if again.Error() != err.Error() {
			t.Fatalf("Parse() error = %q, then %q", err, again)
		}
	}
	if want := "data.task.title: must be a string"; err.Error() != want {
		t.Errorf("Parse() error = %q, want %q", err, want)
	}
}

func TestValidationError_Error(t *testing.T) {
	err := &ValidationError{Field: "data.task.tags[2]", Message: "must be a string"}
	if got, want := err.Error(), "data.task.tags[2]: must be a string"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestKnownTypes_ListsTheDocumentedEventsSorted(t *testing.T) {
	want := []string{"task.created", "task.deleted", "task.published", "task.status_changed"}
	got := KnownTypes()
	if !slices.Equal(got, want) {
		t.Errorf("KnownTypes() = %v, want %v", got, want)
	}
	got[0] = "changed"
	if KnownTypes()[0] != want[0] {
		t.Errorf("KnownTypes() returned shared state")
	}
}
