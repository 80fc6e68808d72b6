package relay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Batch ingest: POST /v1/events:batch takes newline-delimited JSON, one
// Involveo event per line, and stores every valid line as if it had been
// posted alone. Lines are judged one by one, so a bad event costs only its
// own line; the answer lists every line's outcome. The events are published
// together and the answer waits for all of JetStream's acknowledgements,
// which is what makes a batch cheaper than as many single posts.
const (
	// batchPath is the batch ingest route.
	batchPath = "/v1/events:batch"
	// maxBatchEvents bounds the events of one batch.
	maxBatchEvents = 1000
	// batchBodyFactor times MaxBodyBytes bounds a batch's body; each line is
	// still held to MaxBodyBytes.
	batchBodyFactor = 16
	// ndjson is the batch's media type.
	ndjson = "application/x-ndjson"
)

// batchLine is one line's outcome: status 202 with the event's id and
// matching subscriptions, or an error naming the field.
type batchLine struct {
	Line       int    `json:"line"`
	Status     int    `json:"status"`
	ID         string `json:"id,omitempty"`
	Deliveries *int   `json:"deliveries,omitempty"`
	Error      string `json:"error,omitempty"`
	Field      string `json:"field,omitempty"`
}

type batchResponse struct {
	Accepted int         `json:"accepted"`
	Rejected int         `json:"rejected"`
	Results  []batchLine `json:"results"`
}

func (r *Relay) handleIngestBatch(w http.ResponseWriter, req *http.Request) {
	status, body := r.ingestBatch(req)
	r.metrics.ingest.WithLabelValues(strconv.Itoa(status)).Inc()
	if resp, ok := body.(batchResponse); ok && slices.ContainsFunc(resp.Results, func(l batchLine) bool {
		return l.Status == http.StatusServiceUnavailable
	}) {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	writeJSON(w, status, body)
}

// ingestBatch answers 202 when every line was stored, 207 with the lines'
// own statuses when some were not, and a plain error when the request as a
// whole is refused.
func (r *Relay) ingestBatch(req *http.Request) (int, any) {
	key, status, refusal := r.checkRequest(req, ndjson)
	if refusal != nil {
		return status, *refusal
	}
	limit := batchBodyFactor * r.cfg.MaxBodyBytes
	body, err := io.ReadAll(http.MaxBytesReader(nil, req.Body, limit))
	if err != nil {
		return bodyError(err, limit)
	}
	lines := bytes.Split(body, []byte("\n"))
	if n := countEvents(lines); n > maxBatchEvents {
		return http.StatusRequestEntityTooLarge, errorResponse{
			Error: fmt.Sprintf("%d events, at most %d per batch", n, maxBatchEvents), Field: "body"}
	}
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()

	resp := batchResponse{Results: []batchLine{}}
	type pending struct {
		result int
		msg    *nats.Msg
		future jetstream.PubAckFuture
	}
	var stored []pending
	for i, line := range lines {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		res := batchLine{Line: i + 1}
		if int64(len(line)) > r.cfg.MaxBodyBytes {
			res.Status, res.Error, res.Field = http.StatusRequestEntityTooLarge,
				fmt.Sprintf("event exceeds %d bytes", r.cfg.MaxBodyBytes), "body"
			resp.Results = append(resp.Results, res)
			continue
		}
		env, refusal := parseEvent(line)
		if refusal != nil {
			res.Status, res.Error, res.Field = http.StatusBadRequest, refusal.Error, refusal.Field
			resp.Results = append(resp.Results, res)
			continue
		}
		lineKey := ""
		if key != "" {
			// One key per line: a resubmitted batch is recognised line by line.
			lineKey = key + "#" + strconv.Itoa(i+1)
		}
		msg, msgID := eventMsg(env, lineKey)
		deliveries := len(r.routes.Load().Match(env.Type))
		res.Deliveries = &deliveries
		future, err := r.queue.js.PublishMsgAsync(msg, jetstream.WithMsgID(msgID))
		resp.Results = append(resp.Results, res)
		if err != nil {
			r.refuseLine(&resp.Results[len(resp.Results)-1], err)
			continue
		}
		stored = append(stored, pending{result: len(resp.Results) - 1, msg: msg, future: future})
	}
	for _, p := range stored {
		res := &resp.Results[p.result]
		select {
		case ack := <-p.future.Ok():
			if res.ID, err = r.acceptedID(ctx, p.msg, ack); err != nil {
				r.refuseLine(res, err)
				continue
			}
			res.Status = http.StatusAccepted
		case err := <-p.future.Err():
			r.refuseLine(res, err)
		case <-ctx.Done():
			r.refuseLine(res, ctx.Err())
		}
	}
	for _, res := range resp.Results {
		if res.Status == http.StatusAccepted {
			resp.Accepted++
		} else {
			resp.Rejected++
		}
	}
	if resp.Rejected > 0 {
		return http.StatusMultiStatus, resp
	}
	return http.StatusAccepted, resp
}

// refuseLine marks a valid line the store did not take: the producer should
// send it again.
func (r *Relay) refuseLine(res *batchLine, err error) {
	r.log.Error(err, "store event of a batch", "line", res.Line)
	res.Status, res.Deliveries, res.ID = http.StatusServiceUnavailable, nil, ""
	res.Error = "the event store cannot accept events right now; retry later"
}

// countEvents counts the lines that hold something.
func countEvents(lines [][]byte) int {
	n := 0
	for _, l := range lines {
		if len(bytes.TrimSpace(l)) > 0 {
			n++
		}
	}
	return n
}
