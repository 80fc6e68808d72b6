package filter

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeData(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    any
		wantErr string
	}{
		{
			name: "keeps only data, with objects, arrays, strings, booleans and null",
			body: `{"event": "task.created", "timestamp": "x", "data": {"a": ["x", true, null], "b": {}}}`,
			want: map[string]any{"a": []any{"x", true, nil}, "b": map[string]any{}},
		},
		{
			name: "decodes integers as int64 and other numbers as float64",
			body: `{"data": {"n": 3, "neg": -7, "f": 3.5, "e": 1e2, "whole": 3.0, "big": 18446744073709551616}}`,
			want: map[string]any{"n": int64(3), "neg": int64(-7), "f": 3.5, "e": 100.0, "whole": 3.0,
				"big": 18446744073709551616.0},
		},
		{
			name: "decodes numbers inside arrays and nested objects",
			body: `{"data": {"list": [1, [2.5, {"x": 3}]]}}`,
			want: map[string]any{"list": []any{int64(1), []any{2.5, map[string]any{"x": int64(3)}}}},
		},
		{
			name: "turns a number beyond float64 into infinity instead of failing the event",
			body: `{"data": {"huge": 1e400, "tiny": -1e400}}`,
			want: map[string]any{"huge": math.Inf(1), "tiny": math.Inf(-1)},
		},
		{
			name: "reads the key data exactly, not Data",
			body: `{"Data": {"a": 1}, "data": {"b": 2}}`,
			want: map[string]any{"b": int64(2)},
		},
		{name: "fails on a body that is not JSON", body: `{"data": `, wantErr: "decode event data: unexpected EOF"},
		{name: "fails on a body without data", body: `{"event": "task.created"}`, wantErr: "the body has no data field"},
		{name: "fails on data that is null", body: `{"data": null}`, wantErr: "data is not an object"},
		{name: "fails on data that is an array", body: `{"data": [1]}`, wantErr: "data is not an object"},
		{name: "fails on a body that is an array", body: `[{"data": {}}]`, wantErr: "decode event data: json: cannot unmarshal array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeData([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DecodeData error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeData: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeData = %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestDecodeData_NumbersInFilters checks that decoded numbers compare as a reader of the JSON
// expects, whichever way they are spelled.
func TestDecodeData_NumbersInFilters(t *testing.T) {
	ev := withData(t, "task.created", `{"n": 3, "f": 4.5, "whole": 3.0, "list": [10, 20, 30]}`)
	tests := []struct {
		name string
		expr string
		want bool
	}{
		{"an integer equals an int literal", `data.n == 3`, true},
		{"an integer differs from another int literal", `data.n == 4`, false},
		{"an integer equals a double literal", `data.n == 3.0`, true},
		{"an integer takes part in int arithmetic", `data.n + 1 == 4`, true},
		{"an integer compares with a double literal", `data.n < 3.5`, true},
		{"a fraction compares with an int literal", `data.f > 4`, true},
		{"a fraction equals a double literal", `data.f == 4.5`, true},
		{"a number written 3.0 equals an int literal", `data.whole == 3`, true},
		{"an integer indexes a list", `data.list[data.n - 1] == 30`, true},
		{"a list of integers contains an int literal", `20 in data.list`, true},
		{"a list of integers divides with int arithmetic", `data.list.map(x, x / 10) == [1, 2, 3]`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mustCompile(t, tt.expr).Eval(t.Context(), ev.eventType, ev.timestamp, ev.data)
			if err != nil {
				t.Fatalf("Eval: %v", err)
			}
			if got != tt.want {
				t.Errorf("Eval = %v, want %v", got, tt.want)
			}
		})
	}
}

// BenchmarkDecodeData measures the once-per-event decode the relay does before evaluating
// any filter.
func BenchmarkDecodeData(b *testing.B) {
	raw, err := os.ReadFile(filepath.Join("..", "event", "testdata", "task.status_changed.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := DecodeData(raw); err != nil {
			b.Fatal(err)
		}
	}
}
