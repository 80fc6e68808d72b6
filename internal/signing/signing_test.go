package signing_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/involveo/webhook-operator/internal/signing"
)

// The published test vector of the Standard Webhooks specification, from its reference
// libraries (standard-webhooks/standard-webhooks: libraries/go/webhook_test.go
// TestWebhookSign, libraries/javascript/src/webhook.test.ts "sign function works",
// libraries/python/tests/test_webhooks.py test_sign_function). Matching it is what lets a
// receiver check our deliveries with any of those libraries.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

	// vectorBadSignature is vectorSignature with its last base64 digit changed, from the
	// same Python tests (test_invalid_signature_raises_error).
	vectorBadSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
	// vectorOtherSignature is the non-matching entry the reference Go, JavaScript and
	// Python tests mix into a multi-signature header.
	vectorOtherSignature = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
)

// specSign is an independent signer written from the specification's text ("Signature
// scheme" and "Webhook headers"), sharing no code with the package: the content to sign
// is "{msg_id}.{timestamp}.{payload}", the signature is HMAC-SHA256 with the key, base64
// encoded and prefixed with "v1,"; the key of a "whsec_" secret is the base64 after the
// prefix.
func specSign(t *testing.T, whsec, id string, unixSeconds int64, body []byte) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(whsec, "whsec_"))
	if err != nil {
		t.Fatalf("test secret %q is not base64: %v", whsec, err)
	}
	content := id + "." + strconv.FormatInt(unixSeconds, 10) + "." + string(body)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(content))
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// specVerify is the receiver side of specSign: any space-delimited v1 entry of the
// header that equals the expected signature, compared in constant time.
func specVerify(t *testing.T, whsec string, hdr http.Header, body []byte) bool {
	t.Helper()
	ts, err := strconv.ParseInt(hdr.Get("Webhook-Timestamp"), 10, 64)
	if err != nil {
		t.Fatalf("webhook-timestamp %q is not unix seconds", hdr.Get("Webhook-Timestamp"))
	}
	want := specSign(t, whsec, hdr.Get("Webhook-Id"), ts, body)
	for _, entry := range strings.Split(hdr.Get("Webhook-Signature"), " ") {
		if hmac.Equal([]byte(entry), []byte(want)) {
			return true
		}
	}
	return false
}

func mustParse(t *testing.T, s string) signing.Secret {
	t.Helper()
	sec, err := signing.ParseSecret([]byte(s))
	if err != nil {
		t.Fatalf("ParseSecret: %v", err)
	}
	return sec
}

// Secrets for the tests that need more than the vector's: 33-byte keys whose text makes a
// leak easy to spot.
const (
	secretA = "whsec_c2VjcmV0LWEtZm9yLXRoZS1zaWduaW5nLXRlc3RzLTAx" // "secret-a-for-the-signing-tests-01"
	secretB = "whsec_c2VjcmV0LWItZm9yLXRoZS1zaWduaW5nLXRlc3RzLTAy" // "secret-b-for-the-signing-tests-02"
	secretC = "whsec_c2VjcmV0LWMtZm9yLXRoZS1zaWduaW5nLXRlc3RzLTAz" // "secret-c-for-the-signing-tests-03"
)

func TestSign_MatchesStandardWebhooksVector(t *testing.T) {
	got := signing.Sign(vectorID, time.Unix(vectorTimestamp, 0), []byte(vectorBody), mustParse(t, vectorSecret))

	want := signing.Headers{ID: vectorID, Timestamp: "1614265330", Signature: vectorSignature}
	if got != want {
		t.Fatalf("Sign = %+v, want %+v", got, want)
	}
}

func TestSign_TruncatesToWholeSeconds(t *testing.T) {
	ts := time.Unix(vectorTimestamp, 999_999_999).In(time.FixedZone("UTC+3", 3*3600))

	got := signing.Sign(vectorID, ts, []byte(vectorBody), mustParse(t, vectorSecret))

	if got.Timestamp != "1614265330" || got.Signature != vectorSignature {
		t.Fatalf("Sign = %+v, want the vector's timestamp and signature", got)
	}
}

func TestVerify_AcceptsStandardWebhooksVector(t *testing.T) {
	tests := []struct {
		name      string
		signature string
		wantErr   error
	}{
		{name: "accepts the published signature", signature: vectorSignature},
		{
			name: "accepts the published multi-signature header with a v2 entry and non-matching v1 entries",
			signature: strings.Join([]string{
				"v1," + vectorOtherSignature, "v2," + vectorOtherSignature, vectorSignature, "v1," + vectorOtherSignature,
			}, " "),
		},
		{name: "rejects the published invalid signature", signature: vectorBadSignature, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects the right signature under another version", signature: "v1a," + strings.TrimPrefix(vectorSignature, "v1,"), wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a truncated signature", signature: vectorSignature[:8], wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects an empty v1 entry", signature: "v1,", wantErr: signing.ErrNoMatchingSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{}
			hdr.Set("webhook-id", vectorID)
			hdr.Set("webhook-timestamp", "1614265330")
			hdr.Set("webhook-signature", tt.signature)

			err := signing.Verify(mustParse(t, vectorSecret), hdr, []byte(vectorBody), time.Unix(vectorTimestamp, 0), signing.DefaultTolerance)

			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestSign_AgreesWithIndependentImplementation(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ts   int64
		body []byte
	}{
		{name: "signs the specification's vector", id: vectorID, ts: vectorTimestamp, body: []byte(vectorBody)},
		{name: "signs an empty body", id: "msg_empty", ts: 1700000000, body: nil},
		{name: "signs a UTF-8 body byte for byte", id: "2KWPBgLlAfxdpx2AI54pPJ", ts: 1674087231, body: []byte(`{"status_after":"Готово"}`)},
		{name: "signs a body that is not text", id: "msg_bin", ts: 1, body: []byte{0, 0xff, '.', '\n', 0x80}},
		{name: "signs a 1 MiB body", id: "msg_big", ts: 2000000000, body: bytes.Repeat([]byte("x."), 1<<19)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, whsec := range []string{vectorSecret, secretA} {
				got := signing.Sign(tt.id, time.Unix(tt.ts, 0), tt.body, mustParse(t, whsec))

				if want := specSign(t, whsec, tt.id, tt.ts, tt.body); got.Signature != want {
					t.Fatalf("Sign = %q, independent signer = %q", got.Signature, want)
				}
				hdr := http.Header{}
				got.Apply(hdr)
				if !specVerify(t, whsec, hdr, tt.body) {
					t.Fatalf("independent verifier refuses %+v", got)
				}
			}
		})
	}
}

func TestVerify_AcceptsIndependentlySignedRequest(t *testing.T) {
	body := []byte(`{"event":"task.created"}`)
	now := time.Unix(1700000000, 0)
	hdr := http.Header{}
	hdr.Set("Webhook-Id", "msg_independent")
	hdr.Set("Webhook-Timestamp", "1700000000")
	hdr.Set("Webhook-Signature", specSign(t, secretA, "msg_independent", 1700000000, body))

	if err := signing.Verify(mustParse(t, secretA), hdr, body, now, signing.DefaultTolerance); err != nil {
		t.Fatalf("Verify = %v, want nil", err)
	}
}

func TestSign_RotationOverlapSignsWithEachSecret(t *testing.T) {
	body := []byte(`{"event":"task.updated"}`)
	ts := time.Unix(1700000000, 0)
	current, previous := mustParse(t, secretA), mustParse(t, secretB)

	h := signing.Sign("msg_rotation", ts, body, current, previous)

	entries := strings.Split(h.Signature, " ")
	if len(entries) != 2 {
		t.Fatalf("Signature = %q, want two space-separated entries", h.Signature)
	}
	for i, whsec := range []string{secretA, secretB} {
		if want := specSign(t, whsec, "msg_rotation", 1700000000, body); entries[i] != want {
			t.Errorf("entry %d = %q, want %q (the independent signature with secret %d)", i, entries[i], want, i)
		}
	}
	hdr := http.Header{}
	h.Apply(hdr)
	for name, s := range map[string]signing.Secret{"current": current, "previous": previous} {
		if err := signing.Verify(s, hdr, body, ts, signing.DefaultTolerance); err != nil {
			t.Errorf("Verify with the %s secret = %v, want nil", name, err)
		}
	}
	if err := signing.Verify(mustParse(t, secretC), hdr, body, ts, signing.DefaultTolerance); !errors.Is(err, signing.ErrNoMatchingSignature) {
		t.Errorf("Verify with a third secret = %v, want %v", err, signing.ErrNoMatchingSignature)
	}
	// Each entry alone verifies only with its own secret: the two are not interchangeable.
	for i, s := range []signing.Secret{current, previous} {
		other := []signing.Secret{previous, current}[i]
		one := hdr.Clone()
		one.Set("Webhook-Signature", entries[i])
		if err := signing.Verify(s, one, body, ts, signing.DefaultTolerance); err != nil {
			t.Errorf("entry %d with its own secret: %v", i, err)
		}
		if err := signing.Verify(other, one, body, ts, signing.DefaultTolerance); !errors.Is(err, signing.ErrNoMatchingSignature) {
			t.Errorf("entry %d with the other secret = %v, want %v", i, err, signing.ErrNoMatchingSignature)
		}
	}
}

func TestSign_SkipsZeroSecrets(t *testing.T) {
	body := []byte(`{}`)
	ts := time.Unix(1700000000, 0)
	current := mustParse(t, secretA)

	withUnsetPrevious := signing.Sign("msg_1", ts, body, current, signing.Secret{})
	if withUnsetPrevious != signing.Sign("msg_1", ts, body, current) {
		t.Errorf("an unset previous secret changed the headers: %+v", withUnsetPrevious)
	}
	if none := signing.Sign("msg_1", ts, body); none.Signature != "" {
		t.Errorf("Sign without secrets: Signature = %q, want empty", none.Signature)
	}
}

func TestHeaders_Apply(t *testing.T) {
	hdr := http.Header{}
	hdr.Add("webhook-signature", "v1,stale")
	hdr.Set("Content-Type", "application/json")

	signing.Headers{ID: "msg_1", Timestamp: "1700000000", Signature: "v1,abc v1,def"}.Apply(hdr)

	want := http.Header{
		"Webhook-Id":        {"msg_1"},
		"Webhook-Timestamp": {"1700000000"},
		"Webhook-Signature": {"v1,abc v1,def"},
		"Content-Type":      {"application/json"},
	}
	if !reflect.DeepEqual(hdr, want) {
		t.Fatalf("header = %v, want %v", hdr, want)
	}
}

func TestVerify_Rejects(t *testing.T) {
	body := []byte(`{"event":"task.created","data":{"id":1}}`)
	signedAt := time.Unix(1700000000, 0)
	secret := mustParse(t, secretA)
	signed := http.Header{}
	signing.Sign("msg_1", signedAt, body, secret).Apply(signed)
	wrong := mustParse(t, secretB)

	tests := []struct {
		name      string
		secret    *signing.Secret // nil: the secret the request was signed with
		edit      func(http.Header)
		body      []byte // nil: the body that was signed
		now       time.Time
		tolerance time.Duration // zero: DefaultTolerance
		wantErr   error
		wantAny   bool // an error that has no sentinel (a misuse of Verify, not a bad request)
	}{
		{name: "accepts the untouched request", now: signedAt},
		{name: "accepts a request exactly at the tolerance in the past", now: signedAt.Add(signing.DefaultTolerance)},
		{name: "accepts a request exactly at the tolerance in the future", now: signedAt.Add(-signing.DefaultTolerance)},
		{name: "rejects a wrong secret", secret: &wrong, now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a tampered body", body: []byte(`{"event":"task.created","data":{"id":2}}`), now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a re-encoded body", body: []byte(`{"data":{"id":1},"event":"task.created"}`), now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a changed webhook-id", edit: func(h http.Header) { h.Set("webhook-id", "msg_2") }, now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a changed webhook-timestamp", edit: func(h http.Header) { h.Set("webhook-timestamp", "1700000001") }, now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a timestamp written differently from the one signed", edit: func(h http.Header) { h.Set("webhook-timestamp", "+1700000000") }, now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects a request a second older than the tolerance", now: signedAt.Add(signing.DefaultTolerance + time.Second), wantErr: signing.ErrTimestampOutOfTolerance},
		{name: "rejects a request an hour old", now: signedAt.Add(time.Hour), wantErr: signing.ErrTimestampOutOfTolerance},
		{name: "rejects a request dated beyond the tolerance in the future", now: signedAt.Add(-signing.DefaultTolerance - time.Second), wantErr: signing.ErrTimestampOutOfTolerance},
		{name: "rejects an old request under a tighter tolerance", now: signedAt.Add(11 * time.Second), tolerance: 10 * time.Second, wantErr: signing.ErrTimestampOutOfTolerance},
		{name: "rejects a timestamp that is not a number", edit: func(h http.Header) { h.Set("webhook-timestamp", "hello") }, now: signedAt, wantErr: signing.ErrBadTimestamp},
		{name: "rejects a timestamp in milliseconds as out of tolerance", edit: func(h http.Header) { h.Set("webhook-timestamp", "1700000000000") }, now: signedAt, wantErr: signing.ErrTimestampOutOfTolerance},
		{name: "rejects a missing webhook-id", edit: func(h http.Header) { h.Del("webhook-id") }, now: signedAt, wantErr: signing.ErrMissingHeader},
		{name: "rejects a missing webhook-timestamp", edit: func(h http.Header) { h.Del("webhook-timestamp") }, now: signedAt, wantErr: signing.ErrMissingHeader},
		{name: "rejects a missing webhook-signature", edit: func(h http.Header) { h.Del("webhook-signature") }, now: signedAt, wantErr: signing.ErrMissingHeader},
		{name: "rejects an empty webhook-signature", edit: func(h http.Header) { h.Set("webhook-signature", "") }, now: signedAt, wantErr: signing.ErrMissingHeader},
		{name: "rejects a signature without its version", edit: func(h http.Header) { h.Set("webhook-signature", strings.TrimPrefix(h.Get("webhook-signature"), "v1,")) }, now: signedAt, wantErr: signing.ErrNoMatchingSignature},
		{name: "rejects an unset secret", secret: &signing.Secret{}, now: signedAt, wantAny: true},
		{name: "rejects a zero tolerance instead of skipping the timestamp check", now: signedAt, tolerance: -1, wantAny: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := signed.Clone()
			if tt.edit != nil {
				tt.edit(hdr)
			}
			s, b, tol := secret, tt.body, tt.tolerance
			if tt.secret != nil {
				s = *tt.secret
			}
			if b == nil {
				b = body
			}
			if tol == 0 {
				tol = signing.DefaultTolerance
			}

			err := signing.Verify(s, hdr, b, tt.now, tol)

			switch {
			case tt.wantAny && err == nil:
				t.Fatal("Verify = nil, want an error")
			case !tt.wantAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseSecret(t *testing.T) {
	raw24 := "0123456789abcdefghijklmn"
	tests := []struct {
		name    string
		in      string
		wantKey string // base64 of the key the secret must sign with
		wantErr string // a substring of the error naming the rule
	}{
		{name: "accepts the specification's whsec_ secret", in: vectorSecret, wantKey: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
		{name: "accepts a whsec_ secret ending in a newline", in: vectorSecret + "\n", wantKey: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
		{name: "accepts a whsec_ secret with padding", in: "whsec_" + base64.StdEncoding.EncodeToString([]byte(raw24+"x")), wantKey: base64.StdEncoding.EncodeToString([]byte(raw24 + "x"))},
		{name: "accepts raw bytes of exactly the minimum length", in: raw24, wantKey: base64.StdEncoding.EncodeToString([]byte(raw24))},
		{name: "keeps a raw secret's trailing newline as part of the key", in: raw24 + "\n", wantKey: base64.StdEncoding.EncodeToString([]byte(raw24 + "\n"))},
		{name: "reads unprefixed base64 as raw bytes, not as the key it encodes", in: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", wantKey: base64.StdEncoding.EncodeToString([]byte("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))},
		{name: "rejects raw bytes one short of the minimum", in: raw24[:23], wantErr: "raw key is 23 bytes, want at least 24"},
		{name: "rejects an empty secret", in: "", wantErr: "raw key is 0 bytes"},
		{name: "rejects a whsec_ key shorter than the minimum", in: "whsec_" + base64.StdEncoding.EncodeToString([]byte("sixteen-byte-key")), wantErr: "decodes to 16 bytes, want at least 24"},
		{name: "rejects a bare whsec_ prefix", in: "whsec_", wantErr: "decodes to 0 bytes"},
		{name: "rejects a whsec_ secret that is not base64", in: "whsec_not base64! but long enough to pass", wantErr: "is not standard base64"},
		{name: "rejects URL-safe base64 after whsec_", in: "whsec_" + base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 30)), wantErr: "is not standard base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := signing.ParseSecret([]byte(tt.in))

			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSecret error = %v, want one containing %q", err, tt.wantErr)
				}
				if key := strings.TrimPrefix(tt.in, "whsec_"); key != "" && strings.Contains(err.Error(), key) {
					t.Fatalf("error %q echoes the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSecret: %v", err)
			}
			got := signing.Sign("msg_1", time.Unix(1, 0), []byte("{}"), s).Signature
			if want := specSign(t, "whsec_"+tt.wantKey, "msg_1", 1, []byte("{}")); got != want {
				t.Fatalf("secret signs as %q, want the signature of key %s: %q", got, tt.wantKey, want)
			}
		})
	}
}

func TestParseSecret_CopiesRawBytes(t *testing.T) {
	buf := []byte("0123456789abcdefghijklmn")
	s, err := signing.ParseSecret(buf)
	if err != nil {
		t.Fatal(err)
	}
	before := signing.Sign("msg_1", time.Unix(1, 0), nil, s)

	copy(buf, "XXXXXXXXXXXXXXXXXXXXXXXX")

	if after := signing.Sign("msg_1", time.Unix(1, 0), nil, s); after != before {
		t.Fatal("changing the caller's buffer changed the key")
	}
}

func TestSecret_NeverPrintsKey(t *testing.T) {
	raw := "raw-signing-key-that-must-not-leak"
	rawSecret := mustParse(t, raw)
	encSecret := mustParse(t, secretA)
	// Every form the key could take in output: text, base64, fmt's byte slice, hex.
	leaks := []string{
		raw, base64.StdEncoding.EncodeToString([]byte(raw)), fmt.Sprint([]byte(raw)), fmt.Sprintf("%x", raw),
		strings.TrimPrefix(secretA, "whsec_"), "secret-a-for-the-signing-tests-01", fmt.Sprintf("%x", "secret-a-for-the-signing-tests-01"),
	}

	type exported struct {
		Secret signing.Secret `json:"secret"`
	}
	type unexported struct{ s signing.Secret }
	var outputs []string
	for _, s := range []signing.Secret{rawSecret, encSecret} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
			outputs = append(outputs,
				fmt.Sprintf(verb, s), fmt.Sprintf(verb, &s), fmt.Sprintf(verb, []signing.Secret{s}),
				fmt.Sprintf(verb, exported{s}), fmt.Sprintf(verb, unexported{s}), fmt.Sprintf(verb, &unexported{s}))
		}
		outputs = append(outputs, s.String(), s.GoString(), fmt.Sprint(s.MarshalLog()), s.LogValue().String())
		for _, v := range []any{s, exported{s}, map[string]signing.Secret{"k": s}} {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("json.Marshal: %v", err)
			}
			outputs = append(outputs, string(b))
		}
		var log bytes.Buffer
		slog.New(slog.NewJSONHandler(&log, nil)).Info("signing", "secret", s, "holder", exported{s})
		outputs = append(outputs, log.String())
	}

	for _, out := range outputs {
		for _, leak := range leaks {
			if strings.Contains(out, leak) {
				t.Fatalf("output %q contains the key as %q", out, leak)
			}
		}
	}
	if got := fmt.Sprintf("%v", rawSecret); got != "[redacted]" {
		t.Errorf("%%v = %q, want [redacted]", got)
	}
	if got, _ := json.Marshal(exported{rawSecret}); string(got) != `{"secret":"[redacted]"}` {
		t.Errorf("json = %s, want the value redacted", got)
	}
	if got := fmt.Sprint(signing.Secret{}); got != "[unset]" {
		t.Errorf("zero Secret prints %q, want [unset]", got)
	}
}
