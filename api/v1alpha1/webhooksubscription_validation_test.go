package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/testenv"
)

var k8s client.Client

func TestMain(m *testing.M) {
	env, cfg, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err == nil {
		err = corev1.AddToScheme(scheme)
	}
	if err == nil {
		k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	}
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop envtest:", err)
	}
	os.Exit(code)
}

// newNamespace gives each test its own namespace so objects never collide.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "whs-validation-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

func validSubscription(ns string) *v1alpha1.WebhookSubscription {
	return &v1alpha1.WebhookSubscription{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "crm-sync-", Namespace: ns},
		Spec: v1alpha1.WebhookSubscriptionSpec{
			Endpoint:        v1alpha1.Endpoint{URL: "https://crm.example.com/hooks/involveo"},
			Events:          []v1alpha1.EventPattern{"task.published", "task.status_changed"},
			APIKeySecretRef: v1alpha1.SecretKeyReference{Name: "crm-hook", Key: "api-key"},
		},
	}
}

func duration(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

func TestWebhookSubscription_RejectsInvalidSpecs(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name      string
		mutate    func(*v1alpha1.WebhookSubscription)
		wantField string
		wantMsg   string
	}{
		{"rejects a relative URL", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.URL = "/hooks/involveo" },
			"spec.endpoint.url", "absolute http or https URL"},
		{"rejects an ftp URL", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.URL = "ftp://crm.example.com/x" },
			"spec.endpoint.url", "absolute http or https URL"},
		{"rejects a URL without a host", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.URL = "https:///hooks" },
			"spec.endpoint.url", "absolute http or https URL"},
		{"rejects a URL that is not a URL", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.URL = "crm example com" },
			"spec.endpoint.url", "absolute http or https URL"},
		{"rejects an empty URL", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.URL = "" },
			"spec.endpoint.url", "at least 1 chars long"},
		{"rejects an empty events list", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{} },
			"spec.events", "should have at least 1 items"},
		{"rejects a missing events list", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = nil },
			"spec.events", "Required value"},
		{"rejects an uppercase event type", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"TASK.created"} },
			"spec.events[0]", "exact lowercase event type"},
		{"rejects an empty segment", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"task..created"} },
			"spec.events[0]", "exact lowercase event type"},
		{"rejects a double wildcard", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"task.**"} },
			"spec.events[0]", "exact lowercase event type"},
		{"rejects a wildcard in the middle", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"task.*.x"} },
			"spec.events[0]", "exact lowercase event type"},
		{"rejects a prefix without a dot", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"task*"} },
			"spec.events[0]", "exact lowercase event type"},
		{"rejects a duplicate event pattern", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Events = []v1alpha1.EventPattern{"task.created", "task.created"}
		}, "spec.events[1]", "Duplicate value"},
		{"rejects more than 50 event patterns", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Events = nil
			for i := range 51 {
				s.Spec.Events = append(s.Spec.Events, v1alpha1.EventPattern(fmt.Sprintf("task.e%d", i)))
			}
		}, "spec.events", "must have at most 50 items"},
		{"rejects a missing API key Secret name", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Name = "" },
			"spec.apiKeySecretRef.name", "at least 1 chars long"},
		{"rejects an invalid API key Secret name", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Name = "CRM_Hook" },
			"spec.apiKeySecretRef.name", "valid Secret name"},
		{"rejects an invalid API key Secret key", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Key = "api key" },
			"spec.apiKeySecretRef.key", "valid Secret key"},
		{"rejects a header named X-Api-Key", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "X-Api-Key", Value: "k"}}
		}, "spec.headers[0].name", "header X-Api-Key is reserved"},
		{"rejects a header named content-type in any case", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "content-TYPE", Value: "text/plain"}}
		}, "spec.headers[0].name", "is reserved"},
		{"rejects a header named Host", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "Host", Value: "evil.example.com"}}
		}, "spec.headers[0].name", "is reserved"},
		{"rejects a header named Content-Length", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "Content-Length", Value: "1"}}
		}, "spec.headers[0].name", "is reserved"},
		{"rejects a header named X-Involveo-Delivery", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "X-Involveo-Delivery", Value: "1"}}
		}, "spec.headers[0].name", "is reserved"},
		{"rejects a header named X-Involveo-Event", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "x-involveo-event", Value: "1"}}
		}, "spec.headers[0].name", "is reserved"},
		{"rejects a header name with a space", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "X Tenant", Value: "acme"}}
		}, "spec.headers[0].name", "valid HTTP header name"},
		{"rejects a header name with a colon", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "X-Tenant:", Value: "acme"}}
		}, "spec.headers[0].name", "valid HTTP header name"},
		{"rejects header names that differ only in case", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "X-Tenant", Value: "a"}, {Name: "x-tenant", Value: "b"}}
		}, "spec.headers", "header names must be unique"},
		{"rejects a header with both value and valueFrom", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "Authorization", Value: "Bearer x",
				ValueFrom: &v1alpha1.HeaderValueSource{SecretKeyRef: v1alpha1.SecretKeyReference{Name: "crm-hook", Key: "token"}}}}
		}, "spec.headers[0]", "exactly one of value or valueFrom"},
		{"rejects a header with neither value nor valueFrom", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{{Name: "Authorization"}}
		}, "spec.headers[0]", "exactly one of value or valueFrom"},
		{"rejects more than 50 headers", func(s *v1alpha1.WebhookSubscription) {
			for i := range 51 {
				s.Spec.Headers = append(s.Spec.Headers, v1alpha1.Header{Name: fmt.Sprintf("X-H%d", i), Value: "v"})
			}
		}, "spec.headers", "must have at most 50 items"},
		{"rejects a negative retry count", func(s *v1alpha1.WebhookSubscription) { s.Spec.Retry.MaxRetries = ptr.To[int32](-1) },
			"spec.retry.maxRetries", "should be greater than or equal to 0"},
		{"rejects more than 10 retries", func(s *v1alpha1.WebhookSubscription) { s.Spec.Retry.MaxRetries = ptr.To[int32](11) },
			"spec.retry.maxRetries", "should be less than or equal to 10"},
		{"rejects a retry interval under 1s", func(s *v1alpha1.WebhookSubscription) { s.Spec.Retry.Interval = duration(500 * time.Millisecond) },
			"spec.retry.interval", "between 1s and 24h"},
		{"rejects a retry interval over 24h", func(s *v1alpha1.WebhookSubscription) { s.Spec.Retry.Interval = duration(25 * time.Hour) },
			"spec.retry.interval", "between 1s and 24h"},
		{"rejects a negative retry interval", func(s *v1alpha1.WebhookSubscription) { s.Spec.Retry.Interval = duration(-time.Minute) },
			"spec.retry.interval", "between 1s and 24h"},
		{"rejects a timeout under 1s", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.Timeout = duration(10 * time.Millisecond) },
			"spec.endpoint.timeout", "between 1s and 5m"},
		{"rejects a timeout over 5m", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.Timeout = duration(10 * time.Minute) },
			"spec.endpoint.timeout", "between 1s and 5m"},
		{"rejects a filter over 4096 characters", func(s *v1alpha1.WebhookSubscription) { s.Spec.Filter = strings.Repeat("x", 4097) },
			"spec.filter", "may not be more than 4096 bytes"},
		{"rejects a signing secret with an invalid name", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Signing = &v1alpha1.Signing{SecretRef: v1alpha1.SecretKeyReference{Name: "Bad_Name", Key: "k"}}
		}, "spec.signing.secretRef.name", "valid Secret name"},
		{"rejects a previous signing secret without a key", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Signing = &v1alpha1.Signing{SecretRef: v1alpha1.SecretKeyReference{Name: "sig", Key: "k"},
				PreviousSecretRef: &v1alpha1.SecretKeyReference{Name: "sig"}}
		}, "spec.signing.previousSecretRef.key", "at least 1 chars long"},
		{"rejects zero maxInFlight", func(s *v1alpha1.WebhookSubscription) { s.Spec.Delivery.MaxInFlight = ptr.To[int32](0) },
			"spec.delivery.maxInFlight", "should be greater than or equal to 1"},
		{"rejects maxInFlight over 256", func(s *v1alpha1.WebhookSubscription) { s.Spec.Delivery.MaxInFlight = ptr.To[int32](257) },
			"spec.delivery.maxInFlight", "should be less than or equal to 256"},
		{"rejects a zero rate", func(s *v1alpha1.WebhookSubscription) { s.Spec.Delivery.RatePerSecond = ptr.To[int32](0) },
			"spec.delivery.ratePerSecond", "should be greater than or equal to 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			sub := validSubscription(ns)
			tt.mutate(sub)
			err := k8s.Create(context.Background(), sub)
			g.Expect(err).To(HaveOccurred(), "the API server accepted an invalid object")
			g.Expect(err.Error()).To(ContainSubstring(tt.wantField+":"), "the error must name the field")
			g.Expect(err.Error()).To(ContainSubstring(tt.wantMsg))
		})
	}
}

func TestWebhookSubscription_RejectsMalformedDurationStrings(t *testing.T) {
	ns := newNamespace(t)
	for _, value := range []string{"3 minutes", "1d", "", "-"} {
		t.Run(fmt.Sprintf("rejects interval %q", value), func(t *testing.T) {
			g := NewWithT(t)
			obj := map[string]any{
				"apiVersion": v1alpha1.GroupVersion.String(), "kind": "WebhookSubscription",
				"metadata": map[string]any{"generateName": "raw-", "namespace": ns},
				"spec": map[string]any{
					"endpoint":        map[string]any{"url": "https://crm.example.com/h"},
					"events":          []any{"*"},
					"apiKeySecretRef": map[string]any{"name": "crm-hook", "key": "api-key"},
					"retry":           map[string]any{"interval": value},
				},
			}
			err := createUnstructured(obj)
			g.Expect(err).To(HaveOccurred())
			g.Expect(err.Error()).To(ContainSubstring("spec.retry.interval:"))
			g.Expect(err.Error()).To(ContainSubstring("between 1s and 24h"))
		})
	}
}

func TestWebhookSubscription_AcceptsValidSpecsWithDefaults(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name   string
		mutate func(*v1alpha1.WebhookSubscription)
	}{
		{"accepts exact event types", func(*v1alpha1.WebhookSubscription) {}},
		{"accepts a trailing wildcard", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"task.*"} }},
		{"accepts every event", func(s *v1alpha1.WebhookSubscription) { s.Spec.Events = []v1alpha1.EventPattern{"*"} }},
		{"accepts an http URL with a port and query", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Endpoint.URL = "http://crm.internal:8080/hooks?tenant=acme"
		}},
		{"accepts literal headers and headers from Secrets", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Headers = []v1alpha1.Header{
				{Name: "X-Tenant", Value: "acme"},
				{Name: "Authorization", ValueFrom: &v1alpha1.HeaderValueSource{
					SecretKeyRef: v1alpha1.SecretKeyReference{Name: "crm-hook", Key: "token"}}},
			}
		}},
		{"accepts a filter, signing with a rotation overlap and a rate limit", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Filter = `data.task.tags.exists(t, t == "admin")`
			s.Spec.Signing = &v1alpha1.Signing{SecretRef: v1alpha1.SecretKeyReference{Name: "sig", Key: "current"},
				PreviousSecretRef: &v1alpha1.SecretKeyReference{Name: "sig", Key: "previous"}}
			s.Spec.Delivery.RatePerSecond = ptr.To[int32](50)
		}},
		{"accepts zero retries and the bounds of each duration", func(s *v1alpha1.WebhookSubscription) {
			s.Spec.Retry = v1alpha1.RetryPolicy{MaxRetries: ptr.To[int32](0), Interval: duration(24 * time.Hour)}
			s.Spec.Endpoint.Timeout = duration(time.Second)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			sub := validSubscription(ns)
			tt.mutate(sub)
			g.Expect(k8s.Create(context.Background(), sub)).To(Succeed())

			var got v1alpha1.WebhookSubscription
			g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(sub), &got)).To(Succeed())
			g.Expect(got.Spec.Endpoint.Timeout).NotTo(BeNil(), "timeout must be defaulted")
			g.Expect(got.Spec.Retry.MaxRetries).NotTo(BeNil(), "maxRetries must be defaulted")
			g.Expect(got.Spec.Retry.Interval).NotTo(BeNil(), "interval must be defaulted")
			if sub.Spec.Endpoint.Timeout == nil {
				g.Expect(got.Spec.Endpoint.Timeout.Duration).To(Equal(30 * time.Second))
			}
			if sub.Spec.Retry.MaxRetries == nil {
				g.Expect(*got.Spec.Retry.MaxRetries).To(Equal(int32(3)))
				g.Expect(got.Spec.Retry.Interval.Duration).To(Equal(3 * time.Minute))
			}
			g.Expect(got.Spec.Delivery.MaxInFlight).To(Equal(ptr.To[int32](16)), "maxInFlight must be defaulted")
			g.Expect(got.Spec.Events).To(Equal(sub.Spec.Events))
			g.Expect(got.Spec.Headers).To(Equal(sub.Spec.Headers))
		})
	}
}

func TestWebhookSubscription_SchemaDocumentsEveryField(t *testing.T) {
	g := NewWithT(t)
	data, err := os.ReadFile(testenv.RepoRoot() + "/config/crd/bases/webhooks.involveo.io_webhooksubscriptions.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	crd := string(data)
	for _, doc := range []string{
		"headers are extra HTTP headers sent with every delivery",
		"valueFrom reads the header value from a Secret",
		"maxRetries is how many times a failed delivery is retried",
		"events lists the event types delivered to the endpoint",
	} {
		g.Expect(strings.Contains(crd, doc)).To(BeTrue(), "CRD lacks description %q", doc)
	}
}

// createUnstructured sends a raw object, for values the typed client cannot
// express (such as a duration string that does not parse).
func createUnstructured(obj map[string]any) error {
	u := &unstructured.Unstructured{Object: obj}
	return k8s.Create(context.Background(), u)
}
