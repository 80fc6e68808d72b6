// Package render turns WebhookSubscriptions and the data of the Secrets they reference
// into the relay's routing table and credentials, with a verdict per subscription that
// says whether it was routed and, if not, why.
//
// It is pure: no cluster, no clock, no randomness. Equal input gives equal output, down
// to the ConfigMap bytes and their content-hash revision, so the manager can skip writes
// that would change nothing.
package render

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
	"k8s.io/apimachinery/pkg/types"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/filter"
	"github.com/involveo/webhook-operator/internal/routing"
	"github.com/involveo/webhook-operator/internal/signing"
)

// MaxCredentialsBytes bounds the credentials Secret: the API server refuses a Secret
// whose values exceed 1 MiB, and keys count towards etcd's 1.5 MiB request limit (twice:
// in data and in managedFields), so keys and values are counted against 1 MiB here to
// fail with a clear message instead of an API error.
const MaxCredentialsBytes = 1 << 20

// Secrets holds the data of the Secrets the subscriptions reference, by namespace and
// name. A Secret missing from the map does not exist.
type Secrets map[types.NamespacedName]map[string][]byte

// Verdict says whether a subscription is in the routing table and, when it is not, why.
type Verdict struct {
	// Included is true when the subscription is in the table.
	Included bool `json:"included"`
	// Reason is empty when Included, else the Ready reason from api/v1alpha1:
	// Suspended, InvalidSpec, SecretNotFound, SecretKeyNotFound or InvalidSecretValue.
	Reason string `json:"reason,omitempty"`
	// Message says what to do about it, naming Secrets and keys but never a value.
	Message string `json:"message,omitempty"`
}

// Result is the rendered routing configuration.
type Result struct {
	// Table is the routing table, sorted by id, with no secret values.
	Table routing.Table
	// ConfigMap is Table encoded for the routing ConfigMap; its Revision is the
	// table's content hash.
	ConfigMap routing.ConfigMapContent
	// Credentials is the content of the credentials Secret: every value the table
	// refers to by secretKey.
	Credentials map[string][]byte
	// Verdicts has one entry per input subscription.
	Verdicts map[types.NamespacedName]Verdict
}

// Routes renders subs against the Secret data. A subscription that cannot be routed is
// left out with a verdict saying why; the rest of the table is rendered regardless. It
// fails only when the result does not fit the routing ConfigMap or the credentials
// Secret.
func Routes(subs []v1alpha1.WebhookSubscription, secrets Secrets) (*Result, error) {
	sorted := make([]*v1alpha1.WebhookSubscription, len(subs))
	for i := range subs {
		sorted[i] = &subs[i]
	}
	slices.SortFunc(sorted, func(a, b *v1alpha1.WebhookSubscription) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})

	res := &Result{
		Table:       routing.Table{Version: routing.CurrentVersion, Subscriptions: make([]routing.Subscription, 0, len(subs))},
		Credentials: map[string][]byte{},
		Verdicts:    make(map[types.NamespacedName]Verdict, len(subs)),
	}
	credentialBytes := 0
	for _, sub := range sorted {
		route, creds, verdict := renderOne(sub, secrets)
		res.Verdicts[types.NamespacedName{Namespace: sub.Namespace, Name: sub.Name}] = verdict
		if !verdict.Included {
			continue
		}
		res.Table.Subscriptions = append(res.Table.Subscriptions, route)
		for k, v := range creds {
			if _, dup := res.Credentials[k]; !dup {
				credentialBytes += len(k) + len(v)
			}
			res.Credentials[k] = v
		}
	}
	if credentialBytes > MaxCredentialsBytes {
		return nil, fmt.Errorf("render credentials: %d subscriptions need %d bytes of keys and values, more than the %d a Secret holds",
			len(res.Table.Subscriptions), credentialBytes, MaxCredentialsBytes)
	}
	content, err := routing.EncodeConfigMap(&res.Table)
	if err != nil {
		return nil, err
	}
	res.ConfigMap = content
	res.Table.Revision = content.Revision
	return res, nil
}

// renderOne renders one subscription, or says why it is left out. Checks run from the
// user's choice (suspend) through what only a spec edit fixes (InvalidSpec) to what a
// Secret fixes, so the verdict names the most deliberate cause first.
func renderOne(sub *v1alpha1.WebhookSubscription, secrets Secrets) (routing.Subscription, map[string][]byte, Verdict) {
	if sub.Spec.Suspend {
		return routing.Subscription{}, nil, Verdict{Reason: v1alpha1.ReasonSuspended,
			Message: "spec.suspend is true: the subscription is left out of the routing table and receives no events"}
	}
	route := routeFor(sub)
	if err := route.Validate(); err != nil {
		return routing.Subscription{}, nil, Verdict{Reason: v1alpha1.ReasonInvalidSpec,
			Message: "the relay cannot route this spec: " + specMessage(err)}
	}
	if route.Filter != "" {
		// The CRD cannot compile CEL held in a string, so the manager does,
		// with the compiler the relay uses.
		if _, err := filter.Compile(route.Filter); err != nil {
			return routing.Subscription{}, nil, Verdict{Reason: v1alpha1.ReasonInvalidFilter,
				Message: "spec.filter does not compile: " + err.Error()}
		}
	}
	creds := map[string][]byte{}
	for _, ref := range SecretRefs(sub) {
		value, verdict := lookup(sub.Namespace, ref, secrets)
		if !verdict.Included {
			return routing.Subscription{}, nil, verdict
		}
		creds[CredentialKey(sub.Namespace, ref.Name, ref.Key)] = value
	}
	return route, creds, Verdict{Included: true}
}

// routeFor maps the spec onto the routing schema, with every secret referred to by its
// credentials key. Unset durations stay unset: the routing defaults are the CRD's.
func routeFor(sub *v1alpha1.WebhookSubscription) routing.Subscription {
	route := routing.Subscription{
		ID:         sub.Namespace + "/" + sub.Name,
		Generation: sub.Generation,
		URL:        sub.Spec.Endpoint.URL,
		Events:     make([]string, len(sub.Spec.Events)),
		APIKey:     routing.Secret{SecretKey: CredentialKey(sub.Namespace, sub.Spec.APIKeySecretRef.Name, sub.Spec.APIKeySecretRef.Key)},
	}
	for i, e := range sub.Spec.Events {
		route.Events[i] = string(e)
	}
	for _, h := range sub.Spec.Headers {
		header := routing.Header{Name: h.Name, Value: h.Value}
		if h.ValueFrom != nil {
			ref := h.ValueFrom.SecretKeyRef
			header = routing.Header{Name: h.Name, SecretKey: CredentialKey(sub.Namespace, ref.Name, ref.Key)}
		}
		route.Headers = append(route.Headers, header)
	}
	if t := sub.Spec.Endpoint.Timeout; t != nil {
		route.Timeout = routing.NewDuration(t.Duration)
	}
	route.Filter = sub.Spec.Filter
	if sg := sub.Spec.Signing; sg != nil {
		route.Signing = &routing.Signing{Secret: routing.Secret{
			SecretKey: CredentialKey(sub.Namespace, sg.SecretRef.Name, sg.SecretRef.Key)}}
		if p := sg.PreviousSecretRef; p != nil {
			route.Signing.Previous = &routing.Secret{SecretKey: CredentialKey(sub.Namespace, p.Name, p.Key)}
		}
	}
	if n := sub.Spec.Delivery.MaxInFlight; n != nil {
		route.MaxInFlight = int(*n)
	}
	if r := sub.Spec.Delivery.RatePerSecond; r != nil {
		route.RatePerSecond = float64(*r)
	}
	if r := sub.Spec.Retry; r.MaxRetries != nil || r.Interval != nil {
		route.Retry = &routing.Retry{}
		if r.MaxRetries != nil {
			route.Retry.MaxRetries = new(int(*r.MaxRetries))
		}
		if r.Interval != nil {
			route.Retry.Interval = routing.NewDuration(r.Interval.Duration)
		}
	}
	return route
}

// SecretRef is one Secret key a subscription refers to.
type SecretRef struct {
	// Name and Key select the Secret (in the subscription's namespace) and its key.
	Name, Key string
	// Field is the spec field holding the reference, for messages.
	Field string
	// SigningKey marks a signing secret: any bytes, checked as a key rather
	// than as a header value.
	SigningKey bool
}

// SecretRefs lists the Secret keys sub refers to, the API key first, then headers in
// spec order.
func SecretRefs(sub *v1alpha1.WebhookSubscription) []SecretRef {
	refs := []SecretRef{{
		Name: sub.Spec.APIKeySecretRef.Name, Key: sub.Spec.APIKeySecretRef.Key,
		Field: "spec.apiKeySecretRef",
	}}
	for i, h := range sub.Spec.Headers {
		if h.ValueFrom == nil {
			continue
		}
		refs = append(refs, SecretRef{
			Name: h.ValueFrom.SecretKeyRef.Name, Key: h.ValueFrom.SecretKeyRef.Key,
			Field: fmt.Sprintf("spec.headers[%d].valueFrom.secretKeyRef", i),
		})
	}
	if sg := sub.Spec.Signing; sg != nil {
		refs = append(refs, SecretRef{Name: sg.SecretRef.Name, Key: sg.SecretRef.Key,
			Field: "spec.signing.secretRef", SigningKey: true})
		if p := sg.PreviousSecretRef; p != nil {
			refs = append(refs, SecretRef{Name: p.Name, Key: p.Key,
				Field: "spec.signing.previousSecretRef", SigningKey: true})
		}
	}
	return refs
}

// SecretNames lists the names of the Secrets sub refers to, each once, sorted; the
// manager indexes subscriptions by them.
func SecretNames(sub *v1alpha1.WebhookSubscription) []string {
	var names []string
	for _, ref := range SecretRefs(sub) {
		names = append(names, ref.Name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// lookup reads one referenced value. The checks are the ones routing.Compile applies,
// so a value that would make the relay refuse the whole table only excludes this
// subscription.
func lookup(namespace string, ref SecretRef, secrets Secrets) ([]byte, Verdict) {
	data, found := secrets[types.NamespacedName{Namespace: namespace, Name: ref.Name}]
	if !found {
		return nil, Verdict{Reason: v1alpha1.ReasonSecretNotFound,
			Message: fmt.Sprintf("Secret %q not found in namespace %s (referenced by %s); create it and the subscription is routed", ref.Name, namespace, ref.Field)}
	}
	value, found := data[ref.Key]
	switch {
	case !found:
		return nil, Verdict{Reason: v1alpha1.ReasonSecretKeyNotFound,
			Message: fmt.Sprintf("Secret %q has no key %q (referenced by %s)", ref.Name, ref.Key, ref.Field)}
	case len(value) == 0:
		return nil, Verdict{Reason: v1alpha1.ReasonInvalidSecretValue,
			Message: fmt.Sprintf("Secret %q key %q is empty (referenced by %s)", ref.Name, ref.Key, ref.Field)}
	case ref.SigningKey:
		if _, err := signing.ParseSecret(value); err != nil {
			return nil, Verdict{Reason: v1alpha1.ReasonInvalidSecretValue,
				Message: fmt.Sprintf("Secret %q key %q is not a signing secret: %v (referenced by %s)", ref.Name, ref.Key, err, ref.Field)}
		}
	case !httpguts.ValidHeaderFieldValue(string(value)):
		return nil, Verdict{Reason: v1alpha1.ReasonInvalidSecretValue,
			Message: fmt.Sprintf("Secret %q key %q holds a value that cannot be sent as an HTTP header: it has a control character or a line break, often a trailing newline (referenced by %s)", ref.Name, ref.Key, ref.Field)}
	}
	return value, Verdict{Included: true}
}

// fieldPaths maps the routing schema's field paths onto the WebhookSubscription's, so
// that InvalidSpec names the field the user wrote.
var fieldPaths = []struct{ routing, spec string }{
	{"id", "metadata.name"},
	{"url", "spec.endpoint.url"},
	{"timeout", "spec.endpoint.timeout"},
	{"events", "spec.events"},
	{"apiKey", "spec.apiKeySecretRef"},
	{"headers", "spec.headers"},
	{"retry", "spec.retry"},
	{"filter", "spec.filter"},
	{"signing", "spec.signing"},
	{"maxInFlight", "spec.delivery.maxInFlight"},
	{"ratePerSecond", "spec.delivery.ratePerSecond"},
}

// specMessage lists the validation failures of a route with spec field paths.
func specMessage(err error) string {
	var parts []string
	for _, e := range flatten(err) {
		var fe *routing.FieldError
		if !errors.As(e, &fe) {
			parts = append(parts, e.Error())
			continue
		}
		field := fe.Field
		for _, p := range fieldPaths {
			if rest, ok := strings.CutPrefix(field, p.routing); ok && (rest == "" || rest[0] == '.' || rest[0] == '[') {
				field = p.spec + rest
				break
			}
		}
		parts = append(parts, field+": "+fe.Detail)
	}
	return strings.Join(parts, "; ")
}

func flatten(err error) []error {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		return joined.Unwrap()
	}
	return []error{err}
}

// CredentialKey is the credentials Secret key holding the value of key in the Secret
// namespace/secret: the first 16 hex characters (64 bits) of a SHA-256 of the three.
// Keyed by source rather than by subscription, a Secret shared by a tenant's
// subscriptions is stored once; and a short fixed-length key keeps 10,000 credentials
// within the Secret size limit, which long readable keys (namespace, Secret and key
// names of up to 63, 253 and 253 characters) would not, their bytes counting twice
// once server-side apply lists every key in managedFields.
func CredentialKey(namespace, secret, key string) string {
	sum := sha256.Sum256([]byte(namespace + "\x00" + secret + "\x00" + key))
	return hex.EncodeToString(sum[:8])
}
