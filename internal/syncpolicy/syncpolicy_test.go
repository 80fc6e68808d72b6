package syncpolicy

import (
	"strings"
	"testing"
	"time"
)

func TestPolicy_ParsesTheFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    Policy
		wantErr string
	}{
		{in: "", want: Policy{}},
		{in: "always", want: Policy{Always: true}},
		{in: "1s", want: Policy{Interval: time.Second}},
		{in: "250ms", want: Policy{Interval: 250 * time.Millisecond}},
		{in: "0s", wantErr: "positive"},
		{in: "-1s", wantErr: "positive"},
		{in: "Always", wantErr: `"always" or a duration`},
		{in: "soon", wantErr: `"always" or a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := Policy{Interval: time.Hour}
			err := got.Set(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Set(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			var again Policy
			if err := again.Set(got.String()); err != nil || again != got {
				t.Fatalf("String() = %q does not parse back: %+v, %v", got.String(), again, err)
			}
		})
	}
}
