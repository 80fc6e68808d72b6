package routing

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

func TestCompile_AppliesDefaultsAndResolvesCredentials(t *testing.T) {
	routes, err := Compile(goldenTable(), map[string][]byte{
		"team-a.crm-sync.api-key":       []byte("crm-key"),
		"team-a.crm-sync.authorization": []byte("Bearer crm-token"),
		"team-a.audit.api-key":          []byte("audit-key"),
		"team-b.erp.api-key":            []byte("erp-key"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if routes.Revision != "ignored: Render computes its own" {
		t.Errorf("revision %q: a table's own revision must be kept", routes.Revision)
	}
	audit, ok := routes.Get("team-a/audit")
	if !ok {
		t.Fatal("team-a/audit not found")
	}
	if audit.Timeout != DefaultTimeout || audit.MaxRetries != DefaultMaxRetries || audit.Interval != time.Hour {
		t.Errorf("audit: timeout %v retries %d interval %v", audit.Timeout, audit.MaxRetries, audit.Interval)
	}
	crm, _ := routes.Get("team-a/crm-sync")
	if crm.APIKey != "crm-key" || len(crm.Headers) != 2 || crm.Headers[1].Value != "Bearer crm-token" || crm.Headers[0].Value != "acme" {
		t.Errorf("crm credentials not resolved: key %d bytes, %d headers", len(crm.APIKey), len(crm.Headers))
	}
	if crm.URL.Host != "127.0.0.1:9999" || crm.Generation != 3 {
		t.Errorf("crm: url %v generation %d", crm.URL, crm.Generation)
	}
	erp, _ := routes.Get("team-b/erp")
	if erp.MaxRetries != 0 || erp.Interval != DefaultInterval {
		t.Errorf("erp: retries %d interval %v; an explicit 0 must be kept", erp.MaxRetries, erp.Interval)
	}
	var ids []string
	for _, r := range routes.All() {
		ids = append(ids, r.ID)
	}
	if got := strings.Join(ids, ","); got != "team-a/audit,team-a/crm-sync,team-b/erp" || routes.Len() != 3 {
		t.Errorf("All() = %s", got)
	}
}

func TestCompile_NamesTheRevisionOfAnUnrevisedTable(t *testing.T) {
	table := goldenTable()
	table.Revision = ""
	routes, err := Compile(table, credentialsFor(table))
	if err != nil {
		t.Fatal(err)
	}
	_, want, err := Render(table)
	if err != nil {
		t.Fatal(err)
	}
	if routes.Revision != want {
		t.Errorf("revision %q, want Render's %q", routes.Revision, want)
	}
}

func TestCompile_RefusesMissingOrUnsendableCredentials(t *testing.T) {
	table := goldenTable()
	full := credentialsFor(table)
	tests := []struct {
		name   string
		edit   func(map[string][]byte)
		want   string
		secret string
	}{
		{
			name: "names a missing api key",
			edit: func(c map[string][]byte) { delete(c, "team-b.erp.api-key") },
			want: `subscriptions[0] (team-b/erp).apiKey: credentials key "team-b.erp.api-key" not found`,
		},
		{
			name: "names a missing header value",
			edit: func(c map[string][]byte) { delete(c, "team-a.crm-sync.authorization") },
			want: `subscriptions[1] (team-a/crm-sync).headers[1] (Authorization): credentials key "team-a.crm-sync.authorization" not found`,
		},
		{
			name: "refuses an empty value",
			edit: func(c map[string][]byte) { c["team-a.audit.api-key"] = nil },
			want: `(team-a/audit).apiKey: credentials key "team-a.audit.api-key" is empty`,
		},
		{
			name:   "refuses a trailing newline without quoting the value",
			edit:   func(c map[string][]byte) { c["team-a.audit.api-key"] = []byte("s3cr3t-value\n") },
			want:   `credentials key "team-a.audit.api-key" does not hold a valid HTTP header value`,
			secret: "s3cr3t-value",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds := map[string][]byte{}
			for k, v := range full {
				creds[k] = v
			}
			tt.edit(creds)
			_, err := Compile(table, creds)
			if err == nil {
				t.Fatal("compiled")
			}
			mustContain(t, err.Error(), tt.want)
			for _, v := range creds {
				if len(v) > 0 && strings.Contains(err.Error(), string(v)) {
					t.Errorf("the error quotes a credential: %v", err)
				}
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("the error quotes the value: %v", err)
			}
		})
	}
}

func TestRoute_NeverPrintsSecrets(t *testing.T) {
	const apiKey, token = "api-key-value-XYZ", "Bearer token-value-ABC"
	table := &Table{Subscriptions: []Subscription{{
		ID:      "team-a/crm",
		URL:     "https://user:url-password-Q@crm.example.com/hook?token=query-secret-W#frag",
		Events:  []string{"task.*"},
		APIKey:  Secret{Value: apiKey},
		Headers: []Header{{Name: "Authorization", SecretKey: "auth"}},
	}}}
	routes, err := Compile(table, map[string][]byte{"auth": []byte(token)})
	if err != nil {
		t.Fatal(err)
	}
	route, _ := routes.Get("team-a/crm")
	if route.APIKey != apiKey || route.Headers[0].Value != token {
		t.Fatal("the route must still carry its secrets for delivery")
	}

	var printed []string
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		printed = append(printed, fmt.Sprintf(format, route), fmt.Sprintf(format, *route),
			fmt.Sprintf(format, routes.All()), fmt.Sprintf(format, route.Headers), fmt.Sprintf(format, routes),
			fmt.Sprintf(format, table.Subscriptions[0]), fmt.Sprintf(format, table))
	}
	asJSON, err := json.Marshal(route)
	if err != nil {
		t.Fatal(err)
	}
	printed = append(printed, string(asJSON))

	var logged strings.Builder
	logger := funcr.New(func(prefix, args string) { logged.WriteString(args) }, funcr.Options{})
	logger.Info("loaded", "route", route, "routeValue", *route, "header", route.Headers[0], "subscription", table.Subscriptions[0])
	printed = append(printed, logged.String())

	var slogged strings.Builder
	slog.New(slog.NewJSONHandler(&slogged, nil)).Info("loaded", "route", route, "header", route.Headers[0], "apiKey", table.Subscriptions[0].APIKey)
	printed = append(printed, slogged.String())

	for _, out := range printed {
		for _, secret := range []string{apiKey, "token-value-ABC", "url-password-Q", "query-secret-W"} {
			if strings.Contains(out, secret) {
				t.Errorf("%q leaks %q", out, secret)
			}
		}
	}
	mustContain(t, logged.String(), "team-a/crm", "crm.example.com")
	mustContain(t, fmt.Sprint(route), "team-a/crm", "Authorization")
}

func TestRoutes_Match(t *testing.T) {
	table := &Table{Subscriptions: []Subscription{
		{ID: "e-exact", Events: []string{"task.created"}},
		{ID: "a-wild", Events: []string{"task.*"}},
		{ID: "d-all", Events: []string{"*"}},
		{ID: "c-both", Events: []string{"task.created", "task.*", "task.*"}},
		{ID: "b-nested", Events: []string{"task.status.*"}},
		{ID: "f-other", Events: []string{"comment.created"}},
	}}
	for i := range table.Subscriptions {
		table.Subscriptions[i].URL = "https://example.com/" + table.Subscriptions[i].ID
		table.Subscriptions[i].APIKey = Secret{Value: "k"}
	}
	routes, err := Compile(table, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		eventType string
		want      string
	}{
		{"matches exact, wildcard and star once each, in ID order", "task.created", "a-wild,c-both,d-all,e-exact"},
		{"matches nested wildcards for a deep type", "task.status.changed", "a-wild,b-nested,c-both,d-all"},
		{"matches only star for a bare prefix", "task", "d-all"},
		{"matches another family's exact type", "comment.created", "d-all,f-other"},
		{"matches only star for an unknown type", "invoice.paid", "d-all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids []string
			for _, r := range routes.Match(tt.eventType) {
				ids = append(ids, r.ID)
				if !r.Matches(tt.eventType) {
					t.Errorf("%s returned but Matches(%q) is false", r.ID, tt.eventType)
				}
			}
			if got := strings.Join(ids, ","); got != tt.want {
				t.Errorf("Match(%q) = %s, want %s", tt.eventType, got, tt.want)
			}
		})
	}
}

func TestRoutes_MatchAgreesWithMatchEvent(t *testing.T) {
	table := bigTable(2000)
	routes, err := Compile(table, credentialsFor(table))
	if err != nil {
		t.Fatal(err)
	}
	for _, eventType := range []string{"task.created", "task.published", "task.status_changed", "comment.created", "comment.x.y", "task", "other"} {
		var want []string
		for _, r := range routes.All() {
			if r.Matches(eventType) {
				want = append(want, r.ID)
			}
		}
		var got []string
		for _, r := range routes.Match(eventType) {
			got = append(got, r.ID)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("Match(%q): %d routes, a linear scan finds %d", eventType, len(got), len(want))
		}
	}
}

func TestRoutes_NilIsEmpty(t *testing.T) {
	var routes *Routes
	if routes.Len() != 0 || routes.Match("task.created") != nil || routes.All() != nil {
		t.Error("a nil table is not empty")
	}
	if _, ok := routes.Get("x"); ok {
		t.Error("a nil table has a route")
	}
}

func BenchmarkRoutes_Match(b *testing.B) {
	table := bigTable(10_000)
	routes, err := Compile(table, credentialsFor(table))
	if err != nil {
		b.Fatal(err)
	}
	for _, eventType := range []string{"task.status_changed", "comment.created", "invoice.paid"} {
		b.Run(eventType, func(b *testing.B) {
			matched := 0
			for b.Loop() {
				matched = len(routes.Match(eventType))
			}
			b.ReportMetric(float64(matched), "routes/op")
		})
	}
}

func TestCompile_LeavesOutOnlyTheRouteWithABadFilterOrSigningSecret(t *testing.T) {
	table := &Table{Subscriptions: []Subscription{
		{ID: "ns/good", URL: "https://a.example.com", Events: []string{"*"}, APIKey: Secret{Value: "k"},
			Filter:  `data.task.status == "Done"`,
			Signing: &Signing{Secret: Secret{Value: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}},
		{ID: "ns/bad-filter", URL: "https://b.example.com", Events: []string{"*"}, APIKey: Secret{Value: "k"},
			Filter: `data.task.status ==`},
		{ID: "ns/short-key", URL: "https://c.example.com", Events: []string{"*"}, APIKey: Secret{Value: "k"},
			Signing: &Signing{Secret: Secret{Value: "too-short"}}},
	}}
	routes, err := Compile(table, nil)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	if routes.Len() != 1 {
		t.Fatalf("%d routes, want only ns/good", routes.Len())
	}
	good, ok := routes.Get("ns/good")
	if !ok || good.Filter == nil || len(good.Signing) != 1 {
		t.Fatalf("ns/good = %+v", good)
	}
	rejected := fmt.Sprint(routes.Rejected())
	for _, want := range []string{"(ns/bad-filter).filter", "(ns/short-key).signing.secret"} {
		if !strings.Contains(rejected, want) {
			t.Errorf("rejections %s lack %s", rejected, want)
		}
	}
	if strings.Contains(rejected, "too-short") {
		t.Error("a rejection quotes the signing secret")
	}
}

func TestCompile_FingerprintSeesASigningKeyRotation(t *testing.T) {
	table := func(key string) *Table {
		return &Table{Revision: "r1", Subscriptions: []Subscription{{ID: "ns/s", URL: "https://a.example.com",
			Events: []string{"*"}, APIKey: Secret{Value: "k"}, Signing: &Signing{Secret: Secret{SecretKey: "sig"}}}}}
	}
	a, err := Compile(table(""), map[string][]byte{"sig": []byte("first-secret-of-24-bytes!")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(table(""), map[string][]byte{"sig": []byte("second-secret-of-24-bytes")})
	if err != nil {
		t.Fatal(err)
	}
	if a.sameAs(b) {
		t.Fatal("a rotated signing key looks like the same table")
	}
}
