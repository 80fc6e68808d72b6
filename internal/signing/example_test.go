package signing_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/involveo/webhook-operator/internal/signing"
)

// A receiver: an http.HandlerFunc that accepts a delivery only if it is signed with the
// subscription's secret and recent. The part from ParseSecret to the end of the handler is
// what a receiver needs; the rest plays the relay so that the example runs.
func ExampleVerify() {
	// The same value as the Kubernetes Secret named in spec.signing.secretRef.
	secret, err := signing.ParseSecret([]byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
	if err != nil {
		log.Fatal(err)
	}
	receive := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Verify the bytes as received: decoding and re-encoding JSON changes them.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := signing.Verify(secret, r.Header, body, time.Now(), signing.DefaultTolerance); err != nil {
			http.Error(w, "invalid signature", http.StatusUnauthorized)
			return
		}
		// webhook-id is the same on every retry: use it to drop duplicates.
		fmt.Printf("accepted %s: %s\n", r.Header.Get("webhook-id"), body)
		w.WriteHeader(http.StatusNoContent)
	})

	// The relay signs body; the second request's body was changed on the way.
	body := []byte(`{"event":"task.created"}`)
	for _, sent := range [][]byte{body, []byte(`{"event":"task.deleted"}`)} {
		req := httptest.NewRequest(http.MethodPost, "/webhooks", bytes.NewReader(sent))
		signing.Sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", time.Now(), body, secret).Apply(req.Header)
		rec := httptest.NewRecorder()
		receive.ServeHTTP(rec, req)
		fmt.Println(rec.Code)
	}
	// Output:
	// accepted msg_2KWPBgLlAfxdpx2AI54pPJ85f4W: {"event":"task.created"}
	// 204
	// 401
}
