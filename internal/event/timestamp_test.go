package event

import (
	"testing"
	"time"
)

func TestParseTimestamp_Forms(t *testing.T) {
	base := time.Date(2025, 7, 28, 13, 15, 40, 0, time.UTC)
	tests := []struct {
		name    string
		in      string
		want    time.Time
		wantErr bool
	}{
		{name: "accepts the producer's offset followed by Z", in: "2025-07-28T13:15:40.507707+00:00Z", want: base.Add(507707 * time.Microsecond)},
		{name: "accepts the quirk with a non-zero offset and honours the offset", in: "2025-07-28T16:15:40+03:00Z", want: base},
		{name: "accepts the quirk with a lowercase z", in: "2025-07-28T13:15:40+00:00z", want: base},
		{name: "accepts UTC as Z", in: "2025-07-28T13:15:40Z", want: base},
		{name: "accepts a numeric offset", in: "2025-07-28T16:15:40+03:00", want: base},
		{name: "accepts a negative offset with minutes", in: "2025-07-28T07:45:40-05:30", want: base},
		{name: "accepts -00:00", in: "2025-07-28T13:15:40-00:00", want: base},
		{name: "accepts one fractional digit", in: "2025-07-28T13:15:40.5Z", want: base.Add(500 * time.Millisecond)},
		{name: "accepts nine fractional digits", in: "2025-07-28T13:15:40.123456789Z", want: base.Add(123456789)},
		{name: "accepts lowercase t and z as RFC 3339 allows", in: "2025-07-28t13:15:40z", want: base},
		{name: "accepts a leap day", in: "2024-02-29T00:00:00Z", want: time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)},
		{name: "accepts the largest offset", in: "2025-07-29T13:14:40+23:59", want: base},

		{name: "rejects an empty string", in: "", wantErr: true},
		{name: "rejects a date alone", in: "2025-07-28", wantErr: true},
		{name: "rejects a time without an offset", in: "2025-07-28T13:15:40", wantErr: true},
		{name: "rejects a time without seconds", in: "2025-07-28T13:15Z", wantErr: true},
		{name: "rejects a space instead of T", in: "2025-07-28 13:15:40Z", wantErr: true},
		{name: "rejects ten fractional digits", in: "2025-07-28T13:15:40.1234567891Z", wantErr: true},
		{name: "rejects a dot without digits", in: "2025-07-28T13:15:40.Z", wantErr: true},
		{name: "rejects a comma as decimal sign", in: "2025-07-28T13:15:40,5Z", wantErr: true},
		{name: "rejects the basic format", in: "20250728T131540Z", wantErr: true},
		{name: "rejects an offset without a colon", in: "2025-07-28T13:15:40+0000", wantErr: true},
		{name: "rejects an offset of hours only", in: "2025-07-28T13:15:40+00", wantErr: true},
		{name: "rejects Z before the offset", in: "2025-07-28T13:15:40Z+00:00", wantErr: true},
		{name: "rejects a doubled Z", in: "2025-07-28T13:15:40ZZ", wantErr: true},
		{name: "rejects the quirk with a doubled Z", in: "2025-07-28T13:15:40+00:00ZZ", wantErr: true},
		{name: "rejects an offset of 24 hours", in: "2025-07-28T13:15:40+24:00", wantErr: true},
		{name: "rejects an offset of 60 minutes", in: "2025-07-28T13:15:40+00:60", wantErr: true},
		{name: "rejects month 13", in: "2025-13-28T13:15:40Z", wantErr: true},
		{name: "rejects February 29 in a common year", in: "2025-02-29T13:15:40Z", wantErr: true},
		{name: "rejects hour 24", in: "2025-07-28T24:00:00Z", wantErr: true},
		{name: "rejects minute 60", in: "2025-07-28T13:60:40Z", wantErr: true},
		{name: "rejects a leap second, which time.Time cannot hold", in: "2016-12-31T23:59:60Z", wantErr: true},
		{name: "rejects leading whitespace", in: " 2025-07-28T13:15:40Z", wantErr: true},
		{name: "rejects trailing whitespace", in: "2025-07-28T13:15:40Z\n", wantErr: true},
		{name: "rejects non-ASCII digits", in: "２０２５-07-28T13:15:40Z", wantErr: true},
		{name: "rejects a Unix time", in: "1753708540", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTimestamp(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseTimestamp(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTimestamp(%q) error = %v", tt.in, err)
			}
			if !got.Equal(tt.want) {
				t.Errorf("ParseTimestamp(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
