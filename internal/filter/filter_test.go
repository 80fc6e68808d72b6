package filter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The two example filters.
const (
	adminTagFilter = `data.task.tags.exists(t, t == "admin")`
	doneFilter     = `event == "task.status_changed" && data.status_after == "Готово"`
)

// seed is one event body from the event package's seed files, or written in a test.
type seed struct {
	eventType, timestamp string
	data                 any
}

// loadSeed decodes ../event/testdata/<name>.json the way the relay will: envelope fields as
// strings, data through DecodeData.
func loadSeed(t testing.TB, name string) seed {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "event", "testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return decodeSeed(t, raw)
}

func decodeSeed(t testing.TB, raw []byte) seed {
	t.Helper()
	data, err := DecodeData(raw)
	if err != nil {
		t.Fatalf("DecodeData: %v", err)
	}
	// The envelope fields are plain strings; a minimal parse is enough for the tests.
	var s seed
	s.data = data
	for _, f := range []struct {
		key string
		dst *string
	}{{`"event": "`, &s.eventType}, {`"timestamp": "`, &s.timestamp}} {
		_, rest, ok := strings.Cut(string(raw), f.key)
		if !ok {
			t.Fatalf("no %s in %s", f.key, raw)
		}
		*f.dst, _, _ = strings.Cut(rest, `"`)
	}
	return s
}

// withData is an event of the given type whose data is the given JSON object.
func withData(t testing.TB, eventType, data string) seed {
	t.Helper()
	return decodeSeed(t, []byte(`{"event": "`+eventType+`", "timestamp": "2025-07-28T13:15:40Z", "data": `+data+`}`))
}

func mustCompile(t testing.TB, expr string) *Program {
	t.Helper()
	p, err := Compile(expr)
	if err != nil {
		t.Fatalf("Compile(%q): %v", expr, err)
	}
	return p
}

func TestProgram_Eval(t *testing.T) {
	tests := []struct {
		name  string
		expr  string
		event seed
		want  bool
	}{
		{"passes task.created, whose tags include admin", adminTagFilter, loadSeed(t, "task.created"), true},
		{"passes task.published, whose tags include admin", adminTagFilter, loadSeed(t, "task.published"), true},
		{"passes task.status_changed, whose tags include admin", adminTagFilter, loadSeed(t, "task.status_changed"), true},
		{"passes task.deleted, whose tags include admin", adminTagFilter, loadSeed(t, "task.deleted"), true},
		{"filters out a task without the admin tag", adminTagFilter,
			withData(t, "task.created", `{"task": {"tags": ["почва"]}}`), false},
		{"filters out a task with no tags at all", adminTagFilter,
			withData(t, "task.created", `{"task": {"tags": []}}`), false},

		{"passes a status change to Готово", doneFilter, loadSeed(t, "task.status_changed"), true},
		{"filters out a status change to another status", doneFilter,
			withData(t, "task.status_changed", `{"status_before": "Готово", "status_after": "Создан"}`), false},
		{"filters out task.created without reading the status_after it lacks", doneFilter, loadSeed(t, "task.created"), false},
		{"filters out task.published without reading the status_after it lacks", doneFilter, loadSeed(t, "task.published"), false},
		{"filters out task.deleted without reading the status_after it lacks", doneFilter, loadSeed(t, "task.deleted"), false},

		{"reads the timestamp as sent", `timestamp.startsWith("2025-07-28T")`, loadSeed(t, "task.created"), true},
		{"tests for a key with has", `has(data.status_after)`, loadSeed(t, "task.created"), false},
		{"finds Cyrillic text in a string", `data.task.title.contains("суффозия")`,
			loadSeed(t, "task.created"), true},
		{"splits a string with the strings extension", `data.task.content.split(" ").exists(w, w == "электрод.")`,
			loadSeed(t, "task.created"), true},
		{"matches a tag with sets.intersects", `sets.intersects(data.task.tags, ["ops", "почва"])`,
			loadSeed(t, "task.created"), true},
		{"iterates over a map with two variables", `data.user.custom_fields.exists(k, v, k == "id" && v == "sso_user_id")`,
			loadSeed(t, "task.published"), true},
		{"binds a local with cel.bind", `cel.bind(t, data.task, t.status == "Готово" && "admin" in t.tags)`,
			loadSeed(t, "task.status_changed"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mustCompile(t, tt.expr).Eval(t.Context(), tt.event.eventType, tt.event.timestamp, tt.event.data)
			if err != nil {
				t.Fatalf("Eval: %v", err)
			}
			if got != tt.want {
				t.Errorf("Eval = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCompile_Errors(t *testing.T) {
	tests := []struct {
		name string
		expr string
		// want is the whole error string: it becomes a condition message as is.
		want string
		// wantLine and wantColumn are the position the error carries.
		wantLine, wantColumn int
	}{
		{
			name: "reports an undeclared variable at its position",
			expr: `event == "x" && dta.task.status == "Готово"`,
			want: "filter: 1:17: undeclared reference to 'dta'", wantLine: 1, wantColumn: 17,
		},
		{
			name: "counts columns in characters, not bytes",
			expr: `data.status_after == "Готово" && dta.x == 1`,
			want: "filter: 1:34: undeclared reference to 'dta'", wantLine: 1, wantColumn: 34,
		},
		{
			name: "reports the line of an error on the second line",
			expr: "event == \"task.created\" &&\n  dta.task.status == \"Готово\"",
			want: "filter: 2:3: undeclared reference to 'dta'", wantLine: 2, wantColumn: 3,
		},
		{
			name: "reports a syntax error where the parser stopped",
			expr: `data.task.tags.exists(t, t == )`,
			want: "filter: 1:31: Syntax error: mismatched input ')' expecting", wantLine: 1, wantColumn: 31,
		},
		{
			name: "rejects an empty expression",
			expr: ``,
			want: "filter: Syntax error: mismatched input '<EOF>'",
		},
		{
			name: "rejects a string result",
			expr: `data.task.title + "!"`,
			want: "filter: expression must evaluate to a bool, not string",
		},
		{
			name: "rejects a bare data field, whose type is unknown until it runs",
			expr: `data.task.published`,
			want: "filter: expression must evaluate to a bool, not dyn (compare the value, e.g. data.flag == true)",
		},
		{
			name: "rejects an int result",
			expr: `size(data.task.tags)`,
			want: "filter: expression must evaluate to a bool, not int",
		},
		{
			name: "rejects an invalid regular expression before any event arrives",
			expr: `data.task.title.matches("[")`,
			want: "filter: error parsing regexp: missing closing ]",
		},
		{
			name: "rejects an expression longer than MaxExpressionLength characters",
			expr: `event == "` + strings.Repeat("я", MaxExpressionLength) + `"`,
			want: fmt.Sprintf("filter: expression is %d characters long, more than the limit of %d",
				MaxExpressionLength+11, MaxExpressionLength),
		},
		{
			name: "rejects a loop over data nested in another as too expensive",
			expr: `data.task.tags.exists(a, data.user.roles.exists(b, a == b))`,
			want: "filter: expression is too expensive: its estimated cost on an event with 4096-item lists is",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.expr)
			if err == nil {
				t.Fatalf("Compile returned %q, want an error", p)
			}
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("error is %T (%v), want *CompileError", err, err)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to start with %q", err, tt.want)
			}
			if ce.Line != tt.wantLine || ce.Column != tt.wantColumn {
				t.Errorf("position = %d:%d, want %d:%d", ce.Line, ce.Column, tt.wantLine, tt.wantColumn)
			}
		})
	}
}

func TestCompile_Accepts(t *testing.T) {
	tests := []struct {
		name string
		expr string
	}{
		{"accepts an expression of exactly MaxExpressionLength characters",
			`event == "` + strings.Repeat("я", MaxExpressionLength-11) + `"`},
		{"accepts one loop over data with string functions inside",
			`data.task.tags.exists(t, t.lowerAscii().matches("^adm[a-z]+$"))`},
		{"accepts a loop over data that maps then tests",
			`data.task.tags.map(t, t.upperAscii()).exists(t, t == "ADMIN")`},
		{"accepts a loop over a literal list inside a loop over data",
			`data.task.tags.exists(t, ["admin", "ops"].exists(x, t == x))`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustCompile(t, tt.expr)
		})
	}
}

func TestProgram_String(t *testing.T) {
	if got := mustCompile(t, doneFilter).String(); got != doneFilter {
		t.Errorf("String() = %q, want the source %q", got, doneFilter)
	}
}

func TestProgram_EvalErrors(t *testing.T) {
	// longText and items make single loops whose static estimate passes but whose actual
	// cost or duration does not.
	longText := strings.Repeat("Почва ", 50_000)
	items := make([]any, 500_000)
	for i := range items {
		items[i] = int64(i)
	}
	big := seed{eventType: "task.created", data: map[string]any{"text": longText, "items": items}}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		expr string
		ctx  context.Context
		// event defaults to the task.created seed.
		event seed
		// wantErr is a substring of the error; wantIs, if set, must match with errors.Is.
		wantErr string
		wantIs  error
	}{
		{
			name:    "fails on a key the event does not have",
			expr:    `data.status_after == "Готово"`,
			wantErr: "no such key: status_after",
		},
		{
			name:    "fails on a key under a field the event does not have",
			expr:    `data.idea.tags.exists(t, t == "admin")`,
			wantErr: "no such key: idea",
		},
		{
			name:    "fails on a comparison between a string and a number",
			expr:    `data.task.title > 3`,
			wantErr: "no such overload",
		},
		{
			name:    "stops at CostLimit a loop that lowercases a long string on every item",
			expr:    `data.items.exists(i, data.text.lowerAscii() == "")`,
			event:   big,
			wantErr: "cost limit exceeded",
		},
		{
			name:    "stops at EvalTimeout a cheap loop over half a million items",
			expr:    `data.items.exists(i, i < 0)`,
			event:   big,
			wantErr: "took longer than 100ms",
			wantIs:  context.DeadlineExceeded,
		},
		{
			name:    "stops a loop when the caller's context ends",
			expr:    `data.items.exists(i, i < 0)`,
			ctx:     cancelled,
			event:   big,
			wantErr: "context canceled",
			wantIs:  context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = t.Context()
			}
			ev := tt.event
			if ev.data == nil {
				ev = loadSeed(t, "task.created")
			}
			p := mustCompile(t, tt.expr)
			start := time.Now()
			got, err := p.Eval(ctx, ev.eventType, ev.timestamp, ev.data)
			elapsed := time.Since(start)
			if err == nil {
				t.Fatalf("Eval = %v, want an error", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %q, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error = %q, want errors.Is %v", err, tt.wantIs)
			}
			if got {
				t.Error("Eval returned true with an error; the caller must not deliver")
			}
			// The point of the limits: the relay gets its answer promptly. A second leaves
			// room for the race detector and a busy machine around EvalTimeout.
			if elapsed > time.Second {
				t.Errorf("Eval took %v, want it stopped well within a second", elapsed)
			}
		})
	}
}

// TestProgram_EvalConcurrent shares programs and decoded data across goroutines, as the
// relay's workers do; run with -race.
func TestProgram_EvalConcurrent(t *testing.T) {
	programs := []*Program{mustCompile(t, adminTagFilter), mustCompile(t, doneFilter)}
	cases := []struct {
		event seed
		want  []bool // per program
	}{
		{loadSeed(t, "task.created"), []bool{true, false}},
		{loadSeed(t, "task.status_changed"), []bool{true, true}},
		{withData(t, "task.status_changed", `{"status_after": "Создан", "task": {"tags": []}}`), []bool{false, false}},
	}
	const goroutines, rounds = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for r := range rounds {
				c := cases[(g+r)%len(cases)]
				for i, p := range programs {
					got, err := p.Eval(t.Context(), c.event.eventType, c.event.timestamp, c.event.data)
					if err != nil || got != c.want[i] {
						errs <- fmt.Errorf("%s on %s = %v, %v; want %v", p, c.event.eventType, got, err, c.want[i])
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkProgram_Eval measures one evaluation on a seed event, as the relay runs it per
// matching subscription. cost/op is CEL's actual cost, to compare with CostLimit.
func BenchmarkProgram_Eval(b *testing.B) {
	benchmarks := []struct {
		name, expr, seed string
	}{
		{"AdminTag", adminTagFilter, "task.created"},
		{"StatusDone", doneFilter, "task.status_changed"},
		{"StatusOtherEvent", doneFilter, "task.created"},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			p := mustCompile(b, bm.expr)
			ev := loadSeed(b, bm.seed)
			_, det, err := p.prg.ContextEval(b.Context(), &activation{event: ev.eventType, timestamp: ev.timestamp, data: ev.data})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Eval(b.Context(), ev.eventType, ev.timestamp, ev.data); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(*det.ActualCost()), "cost/op")
		})
	}
}
