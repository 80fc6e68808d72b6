package routing

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// designExample is the standalone file of DESIGN §4, verbatim.
const designExample = `
revision: "any string"            # optional standalone; set by the manager in-cluster
subscriptions:
  - id: team-a/crm-sync           # unique; namespace/name in-cluster
    generation: 3                 # optional; the manager sets it so Ready can be confirmed
    url: http://127.0.0.1:9999/hook
    events: ["task.published", "task.*"]
    apiKey: {value: "k-123"}      # or {secretKey: NAME} = key in the credentials file/Secret
    headers:
      - {name: X-Tenant, value: acme}
      - {name: Authorization, secretKey: team-a.crm-sync.authorization}
    timeout: 30s
    retry: {maxRetries: 3, interval: 3m}
`

func TestParse_AcceptsTheDesignExample(t *testing.T) {
	table, err := Parse([]byte(designExample))
	if err != nil {
		t.Fatal(err)
	}
	if table.Revision != "any string" || len(table.Subscriptions) != 1 {
		t.Fatalf("got revision %q and %d subscriptions", table.Revision, len(table.Subscriptions))
	}
	s := table.Subscriptions[0]
	if s.ID != "team-a/crm-sync" || s.Generation != 3 || s.URL != "http://127.0.0.1:9999/hook" {
		t.Errorf("got id %q generation %d url %q", s.ID, s.Generation, s.URL)
	}
	if s.Timeout.Duration != 30*time.Second || *s.Retry.MaxRetries != 3 || s.Retry.Interval.Duration != 3*time.Minute {
		t.Errorf("got timeout %v retry %d×%v", s.Timeout, *s.Retry.MaxRetries, s.Retry.Interval)
	}
	if len(s.Headers) != 2 || s.Headers[1].SecretKey != "team-a.crm-sync.authorization" {
		t.Errorf("got headers %v", s.Headers)
	}
}

func TestParse_AcceptsAnEmptyTable(t *testing.T) {
	for _, doc := range []string{"", "subscriptions: []", "version: 1\nsubscriptions: []"} {
		table, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		if len(table.Subscriptions) != 0 {
			t.Errorf("%q: got %d subscriptions", doc, len(table.Subscriptions))
		}
	}
}

func TestParse_RejectsUnknownField(t *testing.T) {
	_, err := Parse([]byte(strings.Replace(designExample, "timeout: 30s", "timout: 30s", 1)))
	if err == nil {
		t.Fatal("a misspelt field was accepted")
	}
	mustContain(t, err.Error(), `unknown field "timout"`)
}

func TestParse_RejectsDuplicateKey(t *testing.T) {
	_, err := Parse([]byte(strings.Replace(designExample, "timeout: 30s", "timeout: 30s\n    timeout: 10s", 1)))
	if err == nil {
		t.Fatal("a duplicated key was accepted")
	}
	mustContain(t, err.Error(), "timeout")
}

func TestParse_RejectsMistypedDuration(t *testing.T) {
	_, err := Parse([]byte(strings.Replace(designExample, "timeout: 30s", "timeout: 30 seconds", 1)))
	if err == nil {
		t.Fatal("an unparsable duration was accepted")
	}
	mustContain(t, err.Error(), "30 seconds")
}

func TestValidate_NamesTheField(t *testing.T) {
	intp := func(n int) *int { return &n }
	tests := []struct {
		name  string
		edit  func(s *Subscription)
		table func(t *Table)
		want  string
	}{
		{name: "rejects an unknown version", table: func(t *Table) { t.Version = 2 }, want: "version: 2 is not supported"},
		{name: "rejects an empty id", edit: func(s *Subscription) { s.ID = "" }, want: "subscriptions[0].id: must not be empty"},
		{name: "rejects an id with spaces", edit: func(s *Subscription) { s.ID = "team a/crm" }, want: `subscriptions[0] (team a/crm).id: "team a/crm" must not contain spaces`},
		{name: "rejects a duplicate id", table: func(t *Table) { t.Subscriptions = append(t.Subscriptions, validSub("team-a/crm")) }, want: "subscriptions[1] (team-a/crm).id: duplicate of subscriptions[0]"},
		{name: "rejects a negative generation", edit: func(s *Subscription) { s.Generation = -1 }, want: "(team-a/crm).generation: -1 must not be negative"},
		{name: "rejects an empty url", edit: func(s *Subscription) { s.URL = "" }, want: "(team-a/crm).url: must not be empty"},
		{name: "rejects a relative url", edit: func(s *Subscription) { s.URL = "/hooks" }, want: `(team-a/crm).url: "/hooks" must be an absolute http or https URL`},
		{name: "rejects an ftp url", edit: func(s *Subscription) { s.URL = "ftp://example.com/x" }, want: `(team-a/crm).url: "ftp://example.com/x" must be an absolute http or https URL`},
		{name: "rejects a url without a host", edit: func(s *Subscription) { s.URL = "https:///path" }, want: `(team-a/crm).url: "https:///path" has no host`},
		{name: "rejects an unparsable url", edit: func(s *Subscription) { s.URL = "http://[::1" }, want: "(team-a/crm).url: is not a valid URL: missing ']' in host"},
		{name: "rejects a url without quoting its credentials", edit: func(s *Subscription) { s.URL = "ftp://u:pw-secret@example.com/?token=tk-secret" }, want: `(team-a/crm).url: "ftp://xxxxx@example.com/?xxxxx" must be an absolute http or https URL`},
		{name: "rejects no events", edit: func(s *Subscription) { s.Events = nil }, want: "(team-a/crm).events: must list at least one event pattern"},
		{name: "rejects an upper-case event type", edit: func(s *Subscription) { s.Events = []string{"TASK"} }, want: `subscriptions[0] (team-a/crm).events[0]: "TASK" is not a valid event pattern`},
		{name: "rejects a wildcard in the middle", edit: func(s *Subscription) { s.Events = []string{"task.published", "task.*.x"} }, want: `(team-a/crm).events[1]: "task.*.x" is not a valid event pattern`},
		{name: "rejects a wildcard without a dot", edit: func(s *Subscription) { s.Events = []string{"task*"} }, want: `(team-a/crm).events[0]: "task*" is not a valid event pattern`},
		{name: "rejects an api key with neither value nor secretKey", edit: func(s *Subscription) { s.APIKey = Secret{} }, want: "(team-a/crm).apiKey: exactly one of value and secretKey must be set"},
		{name: "rejects an api key with both value and secretKey", edit: func(s *Subscription) { s.APIKey.SecretKey = "k" }, want: "(team-a/crm).apiKey: exactly one of value and secretKey must be set, not both"},
		{name: "rejects an api key with a line break without quoting it", edit: func(s *Subscription) { s.APIKey.Value = "k-123\n" }, want: "(team-a/crm).apiKey: value is not a valid HTTP header value"},
		{name: "rejects a secretKey that cannot be a Secret key", edit: func(s *Subscription) { s.APIKey = Secret{SecretKey: "team-a/crm"} }, want: `(team-a/crm).apiKey: secretKey "team-a/crm" is not a valid Secret key`},
		{name: "rejects a header name with a space", edit: func(s *Subscription) { s.Headers = []Header{{Name: "X Tenant", Value: "a"}} }, want: `(team-a/crm).headers[0].name: "X Tenant" is not a valid HTTP header name`},
		{name: "rejects a header named X-Api-Key", edit: func(s *Subscription) { s.Headers = []Header{{Name: "x-api-key", Value: "a"}} }, want: `(team-a/crm).headers[0].name: "x-api-key" is reserved`},
		{name: "rejects a header named Content-Type", edit: func(s *Subscription) { s.Headers = []Header{{Name: "Content-Type", Value: "text/plain"}} }, want: `(team-a/crm).headers[0].name: "Content-Type" is reserved`},
		{name: "rejects a header named Host", edit: func(s *Subscription) { s.Headers = []Header{{Name: "HOST", Value: "a"}} }, want: `headers[0].name: "HOST" is reserved`},
		{name: "rejects a header named X-Involveo-Delivery", edit: func(s *Subscription) { s.Headers = []Header{{Name: "X-Involveo-Delivery", Value: "a"}} }, want: `headers[0].name: "X-Involveo-Delivery" is reserved`},
		{name: "rejects a hop-by-hop header", edit: func(s *Subscription) { s.Headers = []Header{{Name: "Transfer-Encoding", Value: "chunked"}} }, want: `headers[0].name: "Transfer-Encoding" is reserved`},
		{name: "rejects headers equal but for case", edit: func(s *Subscription) {
			s.Headers = []Header{{Name: "X-Tenant", Value: "a"}, {Name: "x-tenant", Value: "b"}}
		}, want: `(team-a/crm).headers[1].name: "x-tenant" duplicates headers[0]`},
		{name: "rejects a header with neither value nor secretKey", edit: func(s *Subscription) { s.Headers = []Header{{Name: "X-Tenant"}} }, want: "(team-a/crm).headers[0]: exactly one of value and secretKey must be set"},
		{name: "rejects a header with both value and secretKey", edit: func(s *Subscription) { s.Headers = []Header{{Name: "X-Tenant", Value: "a", SecretKey: "b"}} }, want: "(team-a/crm).headers[0]: exactly one of value and secretKey must be set, not both"},
		{name: "rejects a zero timeout", edit: func(s *Subscription) { s.Timeout = NewDuration(0) }, want: "(team-a/crm).timeout: 0s is outside 1s..5m"},
		{name: "rejects a timeout over five minutes", edit: func(s *Subscription) { s.Timeout = NewDuration(10 * time.Minute) }, want: "(team-a/crm).timeout: 10m is outside 1s..5m"},
		{name: "rejects negative retries", edit: func(s *Subscription) { s.Retry = &Retry{MaxRetries: intp(-1)} }, want: "(team-a/crm).retry.maxRetries: -1 is outside 0..10"},
		{name: "rejects more than ten retries", edit: func(s *Subscription) { s.Retry = &Retry{MaxRetries: intp(11)} }, want: "(team-a/crm).retry.maxRetries: 11 is outside 0..10"},
		{name: "rejects a sub-second interval", edit: func(s *Subscription) { s.Retry = &Retry{Interval: NewDuration(500 * time.Millisecond)} }, want: "(team-a/crm).retry.interval: 500ms is outside 1s..24h"},
		{name: "rejects an interval over a day", edit: func(s *Subscription) { s.Retry = &Retry{Interval: NewDuration(25 * time.Hour)} }, want: "(team-a/crm).retry.interval: 25h is outside 1s..24h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := &Table{Subscriptions: []Subscription{validSub("team-a/crm")}}
			if tt.edit != nil {
				tt.edit(&table.Subscriptions[0])
			}
			if tt.table != nil {
				tt.table(table)
			}
			err := table.Validate()
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tt.want)
			}
			mustContain(t, err.Error(), tt.want)
			for _, secret := range []string{"k-123", "pw-secret", "tk-secret"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error quotes a secret: %v", err)
				}
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("%T is not a *FieldError", err)
			}
		})
	}
}

func TestValidate_ReportsEveryProblem(t *testing.T) {
	bad := validSub("team-a/crm")
	bad.Events = []string{"Task"}
	bad.URL = "mailto:x@example.com"
	err := (&Table{Subscriptions: []Subscription{validSub("team-a/ok"), bad}}).Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	mustContain(t, err.Error(), "subscriptions[1] (team-a/crm).url:", "subscriptions[1] (team-a/crm).events[0]:")
}

func TestValidate_AcceptsTheBoundaries(t *testing.T) {
	zero, ten := 0, 10
	s := validSub("team-a/crm")
	s.Events = []string{"*", "task.*", "task.status_changed", "a.b.c_d.*", "v2"}
	s.Headers = []Header{{Name: "User-Agent", Value: "involveo"}, {Name: "X-Token", SecretKey: ".dot-file_key"}}
	s.Timeout = NewDuration(MinTimeout)
	s.Retry = &Retry{MaxRetries: &zero, Interval: NewDuration(MaxInterval)}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	s.Timeout = NewDuration(MaxTimeout)
	s.Retry = &Retry{MaxRetries: &ten, Interval: NewDuration(MinInterval)}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSubscription_Validate_UsesRelativePaths(t *testing.T) {
	s := validSub("team-a/crm")
	s.Events = []string{"task.published", "nope!"}
	err := s.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), `events[1]: "nope!"`) {
		t.Fatalf("got %v", err)
	}
}

func TestValidEventPattern(t *testing.T) {
	tests := []struct {
		pattern string
		valid   bool
	}{
		{"task.created", true},
		{"task.status_changed", true},
		{"task.*", true},
		{"a.b.*", true},
		{"*", true},
		{"task", true},
		{"v2_event.x1", true},
		{"", false},
		{"TASK", false},
		{"task.", false},
		{".task", false},
		{"task..created", false},
		{"task*", false},
		{"*.created", false},
		{"task.*.x", false},
		{".*", false},
		{"**", false},
		{"task-created", false},
		{"задача.создана", false},
		{strings.Repeat("a", MaxEventTypeLength+1), false},
	}
	for _, tt := range tests {
		err := ValidEventPattern(tt.pattern)
		if (err == nil) != tt.valid {
			t.Errorf("ValidEventPattern(%q) = %v, want valid=%v", tt.pattern, err, tt.valid)
		}
	}
}

func TestValidEventType_RefusesPatterns(t *testing.T) {
	for _, typ := range []string{"*", "task.*", "Task.created", ""} {
		if ValidEventType(typ) == nil {
			t.Errorf("ValidEventType(%q) accepted a non-type", typ)
		}
	}
	if err := ValidEventType("task.status_changed"); err != nil {
		t.Error(err)
	}
}

func TestMatchEvent(t *testing.T) {
	tests := []struct {
		name      string
		pattern   string
		eventType string
		want      bool
	}{
		{"star matches any type", "*", "task.created", true},
		{"star matches a single-segment type", "*", "ping", true},
		{"an exact pattern matches itself", "task.created", "task.created", true},
		{"an exact pattern does not match another type", "task.created", "task.deleted", false},
		{"an exact pattern does not match a longer type", "task", "task.created", false},
		{"a wildcard matches a child", "task.*", "task.created", true},
		{"a wildcard matches a grandchild", "task.*", "task.a.b", true},
		{"a wildcard does not match its prefix itself", "task.*", "task", false},
		{"a wildcard does not match a sibling sharing the letters", "task.*", "taskx.y", false},
		{"a wildcard does not match another family", "task.*", "comment.created", false},
		{"a nested wildcard matches below it", "task.status.*", "task.status.changed", true},
		{"a nested wildcard does not match its parent's children", "task.status.*", "task.created", false},
		{"an invalid wildcard matches only literally", "task*", "taskx", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MatchEvent(tt.pattern, tt.eventType); got != tt.want {
				t.Errorf("MatchEvent(%q, %q) = %v, want %v", tt.pattern, tt.eventType, got, tt.want)
			}
		})
	}
}

func TestIsReservedHeader_IgnoresCase(t *testing.T) {
	for _, name := range ReservedHeaders {
		if !IsReservedHeader(strings.ToLower(name)) || !IsReservedHeader(strings.ToUpper(name)) {
			t.Errorf("%s is not reserved in every case", name)
		}
	}
	if IsReservedHeader("User-Agent") || IsReservedHeader("Authorization") {
		t.Error("User-Agent and Authorization must stay allowed")
	}
}
