package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func postBatch(t *testing.T, tr *testRelay, body []byte, header map[string]string) (int, batchResponse, errorResponse) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, tr.ingest+batchPath, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ndjson)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatalf("decode batch answer (%d): %v", resp.StatusCode, err)
	}
	var batch batchResponse
	var refusal errorResponse
	_ = json.Unmarshal(raw, &batch)
	_ = json.Unmarshal(raw, &refusal)
	return resp.StatusCode, batch, refusal
}

// ndjsonOf puts events on one line each.
func ndjsonOf(events ...[]byte) []byte {
	var out bytes.Buffer
	for _, e := range events {
		var compact bytes.Buffer
		if err := json.Compact(&compact, e); err != nil {
			// Invalid JSON goes in as it is, on one line.
			compact.Reset()
			compact.Write(bytes.ReplaceAll(e, []byte("\n"), nil))
		}
		out.Write(compact.Bytes())
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func TestBatchIngest_JudgesEachLineAndStoresTheValidOnes(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback)
	body := ndjsonOf(
		seedEvent(t, "task.created"),
		[]byte(`{"event":"task.created","timestamp":"yesterday","data":{}}`),
		seedEvent(t, "task.deleted"),
	)
	// A blank line is skipped but still counts for the line numbers.
	body = append([]byte("\n"), body...)

	status, batch, _ := postBatch(t, tr, body, nil)
	if status != http.StatusMultiStatus || batch.Accepted != 2 || batch.Rejected != 1 || len(batch.Results) != 3 {
		t.Fatalf("answer %d %+v, want 207 with 2 accepted and 1 rejected", status, batch)
	}
	bad := batch.Results[1]
	if bad.Line != 3 || bad.Status != http.StatusBadRequest || bad.Field != "timestamp" || bad.Error == "" {
		t.Fatalf("rejected line = %+v, want line 3, 400 naming timestamp", bad)
	}
	for _, i := range []int{0, 2} {
		if r := batch.Results[i]; r.Status != http.StatusAccepted || r.ID == "" || r.Deliveries == nil || *r.Deliveries != 1 {
			t.Fatalf("accepted line = %+v", r)
		}
	}
	got := map[string]bool{}
	for range 2 {
		got[ep.next(t, 10*time.Second).header.Get("X-Involveo-Event")] = true
	}
	if !got["task.created"] || !got["task.deleted"] {
		t.Fatalf("delivered %v, want task.created and task.deleted", got)
	}
}

func TestBatchIngest_IdempotencyKeyCoversEveryLine(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback)
	body := ndjsonOf(seedEvent(t, "task.created"), seedEvent(t, "task.published"))
	key := map[string]string{"Idempotency-Key": "batch-7"}
	_, first, _ := postBatch(t, tr, body, key)
	_, again, _ := postBatch(t, tr, body, key)
	if first.Accepted != 2 || again.Accepted != 2 {
		t.Fatalf("accepted %d then %d, want 2 and 2", first.Accepted, again.Accepted)
	}
	for i := range 2 {
		if first.Results[i].ID != again.Results[i].ID {
			t.Fatalf("line %d got id %s, then %s on resubmission", i+1, first.Results[i].ID, again.Results[i].ID)
		}
	}
	info, err := tr.queue.events.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Msgs; n != 2 {
		t.Fatalf("event log holds %d events after a batch of 2 was sent twice, want 2", n)
	}
}

func TestBatchIngest_RefusesTheRequestAsAWhole(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback)
	line := ndjsonOf(seedEvent(t, "task.created"))
	tests := []refusalCase{
		{"refuses JSON instead of NDJSON", line, map[string]string{"Content-Type": "application/json"}, 415, "Content-Type"},
		{"refuses more events than a batch holds", bytes.Repeat(line, maxBatchEvents+1), nil, 413, "body"},
		{"refuses an overlong idempotency key", line, map[string]string{"Idempotency-Key": strings.Repeat("k", 300)}, 400, "Idempotency-Key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, refusal := postBatch(t, tr, tt.body, tt.header)
			if status != tt.wantStatus || refusal.Field != tt.wantField || refusal.Error == "" {
				t.Fatalf("answer %d field %q error %q, want %d field %q", status, refusal.Field, refusal.Error, tt.wantStatus, tt.wantField)
			}
		})
	}
	// Deliveries come from stored events; a refused batch must store none.
	info, err := tr.queue.events.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Msgs; n != 0 {
		t.Fatalf("event log holds %d events from refused batches", n)
	}
}
