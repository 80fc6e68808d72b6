package routing

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// goldenTable covers every field, defaults left out and set, in unsorted order.
func goldenTable() *Table {
	zero := 0
	return &Table{
		Revision: "ignored: Render computes its own",
		Subscriptions: []Subscription{
			{
				ID:         "team-b/erp",
				Generation: 7,
				URL:        "https://erp.example.com/involveo?tenant=b",
				Events:     []string{"*"},
				APIKey:     Secret{SecretKey: "team-b.erp.api-key"},
				Timeout:    NewDuration(90 * time.Second),
				Retry:      &Retry{MaxRetries: &zero},
			},
			{
				ID:         "team-a/crm-sync",
				Generation: 3,
				URL:        "http://127.0.0.1:9999/hook",
				Events:     []string{"task.published", "task.*"},
				APIKey:     Secret{SecretKey: "team-a.crm-sync.api-key"},
				Headers: []Header{
					{Name: "X-Tenant", Value: "acme"},
					{Name: "Authorization", SecretKey: "team-a.crm-sync.authorization"},
				},
				Timeout: NewDuration(30 * time.Second),
				Retry:   &Retry{MaxRetries: new(3), Interval: NewDuration(3 * time.Minute)},
			},
			{
				ID:     "team-a/audit",
				URL:    "https://audit.example.com/events",
				Events: []string{"task.deleted", "yes"},
				APIKey: Secret{SecretKey: "team-a.audit.api-key"},
				Retry:  &Retry{Interval: NewDuration(time.Hour)},
			},
		},
	}
}

func TestRender_MatchesGolden(t *testing.T) {
	data, revision, err := Render(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "render.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(data, want) {
		t.Errorf("rendered table differs from %s (run go test -update if intended):\n%s", golden, data)
	}
	mustContain(t, string(data), "\nrevision: \""+revision+"\"\n")
}

func TestRender_IsDeterministic(t *testing.T) {
	base := bigTable(500)
	wantData, wantRevision, err := Render(base)
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(5) {
		shuffled := &Table{Revision: "stale", Subscriptions: append([]Subscription(nil), base.Subscriptions...)}
		rand.New(rand.NewPCG(seed, seed)).Shuffle(len(shuffled.Subscriptions), func(i, j int) {
			shuffled.Subscriptions[i], shuffled.Subscriptions[j] = shuffled.Subscriptions[j], shuffled.Subscriptions[i]
		})
		data, revision, err := Render(shuffled)
		if err != nil {
			t.Fatal(err)
		}
		if revision != wantRevision || !bytes.Equal(data, wantData) {
			t.Fatalf("shuffle %d rendered revision %s, want %s", seed, revision, wantRevision)
		}
		if shuffled.Revision != "stale" {
			t.Fatal("Render modified its input")
		}
	}
}

func TestRender_RevisionIsTheHashOfTheRestOfTheContent(t *testing.T) {
	data, revision, err := Render(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	without := strings.Replace(string(data), "revision: \""+revision+"\"\n", "", 1)
	sum := sha256.Sum256([]byte(without))
	if want := hex.EncodeToString(sum[:])[:16]; revision != want {
		t.Errorf("revision %s, want %s", revision, want)
	}
}

func TestRender_RevisionFollowsContent(t *testing.T) {
	table := goldenTable()
	_, before, err := Render(table)
	if err != nil {
		t.Fatal(err)
	}
	table.Subscriptions[1].Generation++
	_, after, err := Render(table)
	if err != nil {
		t.Fatal(err)
	}
	if before == after {
		t.Fatal("a new generation kept the revision")
	}
	if len(before) != 16 || strings.Trim(before, "0123456789abcdef") != "" {
		t.Errorf("revision %q is not 16 hex characters", before)
	}
}

func TestRender_RoundTripsThroughParse(t *testing.T) {
	data, revision, err := Render(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Revision != revision || parsed.Version != CurrentVersion {
		t.Errorf("parsed revision %q version %d", parsed.Revision, parsed.Version)
	}
	again, againRevision, err := Render(parsed)
	if err != nil {
		t.Fatal(err)
	}
	if againRevision != revision || !bytes.Equal(again, data) {
		t.Errorf("re-rendering a parsed table changed it:\n%s", again)
	}
	// "yes" is a boolean to YAML 1.1; it must come back as the string it was.
	if got := parsed.Subscriptions[0].Events[1]; got != "yes" {
		t.Errorf("event %q", got)
	}
}

func TestRender_WritesAnEmptyList(t *testing.T) {
	data, _, err := Render(&Table{})
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, string(data), "subscriptions: []")
}

func TestRender_RefusesAnInvalidTable(t *testing.T) {
	table := goldenTable()
	table.Subscriptions[0].Events = nil
	if _, _, err := Render(table); err == nil || !strings.Contains(err.Error(), "(team-b/erp).events") {
		t.Fatalf("got %v", err)
	}
}

func TestRenderGzip_RoundTrips(t *testing.T) {
	plain, revision, err := Render(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	compressed, gzRevision, err := RenderGzip(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := RenderGzip(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(compressed, again) {
		t.Error("gzip output differs between two runs")
	}
	if gzRevision != revision {
		t.Errorf("gzip revision %s, plain %s", gzRevision, revision)
	}
	inflated, err := gunzip(compressed, MaxDecompressedBytes)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inflated, plain) {
		t.Error("gzip round trip changed the content")
	}
}

func TestEncodeConfigMap_KeepsSmallTablesPlain(t *testing.T) {
	content, err := EncodeConfigMap(goldenTable())
	if err != nil {
		t.Fatal(err)
	}
	if content.BinaryData != nil || content.Data[RoutesKey] == "" {
		t.Fatalf("got data keys %v, binary keys %v", len(content.Data), len(content.BinaryData))
	}
	table, err := DecodeConfigMap(&corev1.ConfigMap{Data: content.Data})
	if err != nil {
		t.Fatal(err)
	}
	if table.Revision != content.Revision {
		t.Errorf("decoded revision %s, encoded %s", table.Revision, content.Revision)
	}
}

func TestEncodeConfigMap_GzipsTenThousandSubscriptionsUnderTheLimit(t *testing.T) {
	big := bigTable(10_000)
	content, err := EncodeConfigMap(big)
	if err != nil {
		t.Fatal(err)
	}
	compressed := content.BinaryData[RoutesGzipKey]
	if content.Data != nil || compressed == nil {
		t.Fatal("a large table was not compressed")
	}
	plain, _, err := Render(big)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("10,000 subscriptions: %d bytes plain, %d gzip", len(plain), len(compressed))
	if len(compressed) >= 1<<20 {
		t.Errorf("compressed table is %d bytes, not under 1 MiB", len(compressed))
	}
	table, err := DecodeConfigMap(&corev1.ConfigMap{BinaryData: content.BinaryData})
	if err != nil {
		t.Fatal(err)
	}
	if table.Revision != content.Revision || len(table.Subscriptions) != 10_000 {
		t.Errorf("decoded revision %s with %d subscriptions", table.Revision, len(table.Subscriptions))
	}
	if !reflect.DeepEqual(table.Subscriptions[42], canonical(big).Subscriptions[42]) {
		t.Errorf("subscription 42 changed in the round trip")
	}
}

func TestDecodeConfigMap_RefusesAmbiguousOrEmptyObjects(t *testing.T) {
	tests := []struct {
		name string
		cm   *corev1.ConfigMap
		want string
	}{
		{"refuses a ConfigMap without the table", &corev1.ConfigMap{Data: map[string]string{"other": "x"}}, "has neither routes.yaml nor routes.yaml.gz"},
		{"refuses a ConfigMap with both keys", &corev1.ConfigMap{Data: map[string]string{RoutesKey: ""}, BinaryData: map[string][]byte{RoutesGzipKey: nil}}, "has both"},
		{"refuses a corrupt gzip", &corev1.ConfigMap{BinaryData: map[string][]byte{RoutesGzipKey: []byte("not gzip")}}, "routes.yaml.gz"},
		{"refuses an invalid table", &corev1.ConfigMap{Data: map[string]string{RoutesKey: "version: 9"}}, "version: 9 is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeConfigMap(tt.cm)
			if err == nil {
				t.Fatal("accepted")
			}
			mustContain(t, err.Error(), tt.want)
		})
	}
}

func TestGunzip_StopsAtTheLimit(t *testing.T) {
	bomb, err := gzipBytes(make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gunzip(bomb, 1<<10); err == nil {
		t.Fatal("inflated past the limit")
	}
}

func TestDuration_WritesTheShortForm(t *testing.T) {
	for d, want := range map[time.Duration]string{
		3 * time.Minute:         "3m",
		time.Hour:               "1h",
		90 * time.Minute:        "1h30m",
		90 * time.Second:        "1m30s",
		1500 * time.Millisecond: "1.5s",
		0:                       "0s",
	} {
		if got := (Duration{d}).String(); got != want {
			t.Errorf("%v written as %q, want %q", time.Duration(d), got, want)
		}
	}
}
