package render

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/routing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// sub builds a valid subscription; mutate adjusts it for a case.
func sub(namespace, name string, mutate ...func(*v1alpha1.WebhookSubscription)) v1alpha1.WebhookSubscription {
	s := v1alpha1.WebhookSubscription{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Generation: 1},
		Spec: v1alpha1.WebhookSubscriptionSpec{
			Endpoint:        v1alpha1.Endpoint{URL: "https://" + name + ".example.com/hook"},
			Events:          []v1alpha1.EventPattern{"task.published"},
			APIKeySecretRef: v1alpha1.SecretKeyReference{Name: "hook", Key: "api-key"},
		},
	}
	for _, m := range mutate {
		m(&s)
	}
	return s
}

func withSecretHeader(header, secret, key string) func(*v1alpha1.WebhookSubscription) {
	return func(s *v1alpha1.WebhookSubscription) {
		s.Spec.Headers = append(s.Spec.Headers, v1alpha1.Header{Name: header,
			ValueFrom: &v1alpha1.HeaderValueSource{SecretKeyRef: v1alpha1.SecretKeyReference{Name: secret, Key: key}}})
	}
}

func withHeader(header, value string) func(*v1alpha1.WebhookSubscription) {
	return func(s *v1alpha1.WebhookSubscription) {
		s.Spec.Headers = append(s.Spec.Headers, v1alpha1.Header{Name: header, Value: value})
	}
}

func nn(namespace, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: namespace, Name: name}
}

// goldenInput covers every verdict and every spec field, in unsorted order.
func goldenInput() ([]v1alpha1.WebhookSubscription, Secrets) {
	subs := []v1alpha1.WebhookSubscription{
		sub("team-b", "erp", func(s *v1alpha1.WebhookSubscription) {
			s.Generation = 7
			s.Spec.Events = []v1alpha1.EventPattern{"*"}
			s.Spec.Endpoint.Timeout = &metav1.Duration{Duration: 90 * time.Second}
			s.Spec.Retry = v1alpha1.RetryPolicy{MaxRetries: new(int32(0))}
		}),
		sub("team-a", "crm-sync", func(s *v1alpha1.WebhookSubscription) {
			s.Generation = 3
			s.Spec.Events = []v1alpha1.EventPattern{"task.published", "task.status_changed"}
			s.Spec.Retry = v1alpha1.RetryPolicy{MaxRetries: new(int32(3)), Interval: &metav1.Duration{Duration: 3 * time.Minute}}
		}, withHeader("X-Tenant", "acme"), withSecretHeader("Authorization", "hook", "token")),
		sub("team-a", "paused", func(s *v1alpha1.WebhookSubscription) { s.Spec.Suspend = true }),
		sub("team-a", "no-secret", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Name = "missing" }),
		sub("team-a", "no-key", withSecretHeader("X-Signature", "hook", "signature")),
		sub("team-a", "newline", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Key = "with-newline" }),
		sub("team-a", "bad-header", withHeader("X-Note", "two\nlines")),
	}
	secrets := Secrets{
		nn("team-a", "hook"): {"api-key": []byte("k-team-a"), "token": []byte("Bearer t-team-a"), "with-newline": []byte("k-team-a-newline\n")},
		nn("team-b", "hook"): {"api-key": []byte("k-team-b")},
	}
	return subs, secrets
}

// goldenView is what the golden file shows: the ConfigMap text, the credentials keys
// (values replaced by their length: the golden file must not teach anyone to commit
// secrets) and every verdict.
type goldenView struct {
	Revision    string             `json:"revision"`
	Credentials map[string]int     `json:"credentialValueLengths"`
	Verdicts    map[string]Verdict `json:"verdicts"`
}

func TestRoutes_MatchesGolden(t *testing.T) {
	subs, secrets := goldenInput()
	res, err := Routes(subs, secrets)
	if err != nil {
		t.Fatal(err)
	}
	view := goldenView{Revision: res.ConfigMap.Revision, Credentials: map[string]int{}, Verdicts: map[string]Verdict{}}
	for k, v := range res.Credentials {
		view.Credentials[k] = len(v)
	}
	for k, v := range res.Verdicts {
		view.Verdicts[k.String()] = v
	}
	summary, err := yaml.Marshal(view)
	if err != nil {
		t.Fatal(err)
	}
	got := []byte(res.ConfigMap.Data[routing.RoutesKey] + "---\n" + string(summary))

	golden := filepath.Join("testdata", "routes.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("rendered routes differ from %s (run go test -update if intended):\n%s", golden, got)
	}
}

func TestRoutes_Verdicts(t *testing.T) {
	secrets := Secrets{nn("ns", "hook"): {"api-key": []byte("k"), "token": []byte("t"), "empty": nil,
		"sig": []byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "short": []byte("too-short")}}
	tests := []struct {
		name        string
		sub         v1alpha1.WebhookSubscription
		wantReason  string
		wantMessage []string
	}{
		{name: "includes a subscription whose Secrets resolve",
			sub: sub("ns", "ok", withSecretHeader("Authorization", "hook", "token"))},
		{name: "leaves out a suspended subscription even when its Secret is missing",
			sub:        sub("ns", "s", func(s *v1alpha1.WebhookSubscription) { s.Spec.Suspend = true; s.Spec.APIKeySecretRef.Name = "gone" }),
			wantReason: v1alpha1.ReasonSuspended, wantMessage: []string{"spec.suspend"}},
		{name: "names the Secret, namespace and field when the API key Secret is missing",
			sub:        sub("ns", "s", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Name = "gone" }),
			wantReason: v1alpha1.ReasonSecretNotFound, wantMessage: []string{`Secret "gone"`, "namespace ns", "spec.apiKeySecretRef"}},
		{name: "names the key and the header field when a header's key is missing",
			sub:        sub("ns", "s", withHeader("X-A", "a"), withSecretHeader("X-B", "hook", "nope")),
			wantReason: v1alpha1.ReasonSecretKeyNotFound, wantMessage: []string{`Secret "hook" has no key "nope"`, "spec.headers[1].valueFrom.secretKeyRef"}},
		{name: "refuses an empty Secret value",
			sub:        sub("ns", "s", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Key = "empty" }),
			wantReason: v1alpha1.ReasonInvalidSecretValue, wantMessage: []string{`key "empty" is empty`}},
		{name: "reports a literal header value the CRD allows but HTTP does not as InvalidSpec on the spec path",
			sub:        sub("ns", "s", withHeader("X-A", "a\rb")),
			wantReason: v1alpha1.ReasonInvalidSpec, wantMessage: []string{"spec.headers[0]:", "not a valid HTTP header value"}},
		{name: "includes a subscription with a filter, signing keys and limits",
			sub: sub("ns", "ok", func(s *v1alpha1.WebhookSubscription) {
				s.Spec.Filter = `data.task.tags.exists(t, t == "admin")`
				s.Spec.Signing = &v1alpha1.Signing{SecretRef: v1alpha1.SecretKeyReference{Name: "hook", Key: "sig"}}
				s.Spec.Delivery.RatePerSecond = new(int32(5))
			})},
		{name: "reports a filter that does not compile as InvalidFilter with its position",
			sub:        sub("ns", "s", func(s *v1alpha1.WebhookSubscription) { s.Spec.Filter = "data.task.tags.exists(t, t ==" }),
			wantReason: v1alpha1.ReasonInvalidFilter, wantMessage: []string{"spec.filter does not compile", "1:"}},
		{name: "refuses a signing secret shorter than 24 bytes without quoting it",
			sub: sub("ns", "s", func(s *v1alpha1.WebhookSubscription) {
				s.Spec.Signing = &v1alpha1.Signing{SecretRef: v1alpha1.SecretKeyReference{Name: "hook", Key: "short"}}
			}),
			wantReason: v1alpha1.ReasonInvalidSecretValue, wantMessage: []string{"not a signing secret", "spec.signing.secretRef"}},
		{name: "reports an invalid URL on spec.endpoint.url",
			sub:        sub("ns", "s", func(s *v1alpha1.WebhookSubscription) { s.Spec.Endpoint.URL = "ftp://x.example.com" }),
			wantReason: v1alpha1.ReasonInvalidSpec, wantMessage: []string{"spec.endpoint.url:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			res, err := Routes([]v1alpha1.WebhookSubscription{tt.sub}, secrets)
			g.Expect(err).NotTo(HaveOccurred())
			v := res.Verdicts[nn(tt.sub.Namespace, tt.sub.Name)]
			g.Expect(v.Reason).To(Equal(tt.wantReason))
			g.Expect(v.Included).To(Equal(tt.wantReason == ""))
			for _, m := range tt.wantMessage {
				g.Expect(v.Message).To(ContainSubstring(m))
			}
			g.Expect(v.Message).NotTo(ContainSubstring("too-short"))
			if tt.wantReason != "" {
				g.Expect(res.Table.Subscriptions).To(BeEmpty())
				g.Expect(res.Credentials).To(BeEmpty())
			}
		})
	}
}

func TestRoutes_OneBadSubscriptionLeavesTheRestRouted(t *testing.T) {
	g := NewWithT(t)
	subs := []v1alpha1.WebhookSubscription{
		sub("ns", "good"),
		sub("ns", "bad", withHeader("X-A", "a\nb")),
		sub("ns", "newline", func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Key = "nl" }),
	}
	secrets := Secrets{nn("ns", "hook"): {"api-key": []byte("k"), "nl": []byte("k\n")}}
	res, err := Routes(subs, secrets)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Table.Subscriptions).To(HaveLen(1))
	g.Expect(res.Table.Subscriptions[0].ID).To(Equal("ns/good"))

	// The relay compiles exactly what the manager writes; it must accept it.
	table, err := routing.DecodeConfigMap(configMap(res))
	g.Expect(err).NotTo(HaveOccurred())
	routes, err := routing.Compile(table, res.Credentials)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(routes.Len()).To(Equal(1))
}

func TestRoutes_NoSecretValueInTheConfigMap(t *testing.T) {
	g := NewWithT(t)
	subs, secrets := goldenInput()
	res, err := Routes(subs, secrets)
	g.Expect(err).NotTo(HaveOccurred())
	text := res.ConfigMap.Data[routing.RoutesKey]
	for _, data := range secrets {
		for _, v := range data {
			if len(v) > 1 {
				g.Expect(text).NotTo(ContainSubstring(string(v)))
			}
		}
	}
	for _, v := range res.Verdicts {
		for _, data := range secrets {
			for _, val := range data {
				if len(val) > 1 {
					g.Expect(v.Message).NotTo(ContainSubstring(string(val)))
				}
			}
		}
	}
}

func TestRoutes_StableAcrossInputOrder(t *testing.T) {
	g := NewWithT(t)
	subs, secrets := goldenInput()
	first, err := Routes(subs, secrets)
	g.Expect(err).NotTo(HaveOccurred())
	slices.Reverse(subs)
	second, err := Routes(subs, secrets)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(second.ConfigMap).To(Equal(first.ConfigMap))
	g.Expect(second.Table.Revision).To(Equal(first.ConfigMap.Revision))
}

func TestRoutes_RendersAnEmptyTable(t *testing.T) {
	g := NewWithT(t)
	res, err := Routes(nil, nil)
	g.Expect(err).NotTo(HaveOccurred())
	table, err := routing.DecodeConfigMap(configMap(res))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(table.Subscriptions).To(BeEmpty())
	g.Expect(res.ConfigMap.Revision).NotTo(BeEmpty())
}

func TestCredentialKey(t *testing.T) {
	g := NewWithT(t)
	long := strings.Repeat("n", 253)
	key := CredentialKey(strings.Repeat("s", 63), long, long)
	g.Expect(key).To(MatchRegexp("^[0-9a-f]{16}$"), "a valid Secret key of fixed length")
	g.Expect(CredentialKey("team-a", "hook", "api-key")).To(Equal(CredentialKey("team-a", "hook", "api-key")))
	g.Expect(CredentialKey("a", "b.c", "d")).NotTo(Equal(CredentialKey("a", "b", "c.d")), "different sources")
	g.Expect(CredentialKey("a", "b", "c")).NotTo(Equal(CredentialKey("x", "b", "c")), "different namespaces")
}

// TestRoutes_TenThousandSubscriptionsFit renders 10,000 subscriptions, each with its
// own Secret (the worst case for the credentials Secret) and a header from a Secret
// shared in its namespace, with namespaces named at the length limit.
func TestRoutes_TenThousandSubscriptionsFit(t *testing.T) {
	g := NewWithT(t)
	const n = 10_000
	subs := make([]v1alpha1.WebhookSubscription, n)
	secrets := Secrets{}
	for i := range n {
		ns := fmt.Sprintf("%s-%03d", strings.Repeat("tenant", 10), i%500)
		name := fmt.Sprintf("hook-%05d", i)
		subs[i] = sub(ns, name, withHeader("X-Tenant", ns), withSecretHeader("Authorization", "shared", "token"))
		subs[i].Spec.APIKeySecretRef.Name = name
		subs[i].Spec.Endpoint.URL = fmt.Sprintf("https://hooks-%d.%s.example.com/involveo/%x", i, ns, i*7919)
		secrets[nn(ns, name)] = map[string][]byte{"api-key": []byte(fmt.Sprintf("%040d", i))}
		secrets[nn(ns, "shared")] = map[string][]byte{"token": []byte("Bearer " + strings.Repeat("t", 40))}
	}
	res, err := Routes(subs, secrets)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Table.Subscriptions).To(HaveLen(n))
	g.Expect(res.ConfigMap.BinaryData).To(HaveKey(routing.RoutesGzipKey))
	g.Expect(len(res.ConfigMap.BinaryData[routing.RoutesGzipKey])).To(BeNumerically("<", routing.MaxConfigMapBytes))
	g.Expect(res.Credentials).To(HaveLen(n + 500))
	table, err := routing.DecodeConfigMap(configMap(res))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = routing.Compile(table, res.Credentials)
	g.Expect(err).NotTo(HaveOccurred())
}

func TestRoutes_RefusesCredentialsBeyondTheSecretLimit(t *testing.T) {
	g := NewWithT(t)
	subs := make([]v1alpha1.WebhookSubscription, 2000)
	secrets := Secrets{}
	for i := range subs {
		name := fmt.Sprintf("hook-%05d", i)
		subs[i] = sub("ns", name, func(s *v1alpha1.WebhookSubscription) { s.Spec.APIKeySecretRef.Name = name })
		secrets[nn("ns", name)] = map[string][]byte{"api-key": bytes.Repeat([]byte("k"), 1000)}
	}
	_, err := Routes(subs, secrets)
	g.Expect(err).To(MatchError(ContainSubstring("more than the 1048576 a Secret holds")))
}

func BenchmarkRoutes_10kSubscriptions(b *testing.B) {
	const n = 10_000
	subs := make([]v1alpha1.WebhookSubscription, n)
	secrets := Secrets{}
	for i := range n {
		ns := fmt.Sprintf("tenant-%03d", i%500)
		subs[i] = sub(ns, fmt.Sprintf("hook-%05d", i), withSecretHeader("Authorization", "hook", "token"))
		secrets[nn(ns, "hook")] = map[string][]byte{"api-key": []byte("k"), "token": []byte("t")}
	}
	for b.Loop() {
		if _, err := Routes(subs, secrets); err != nil {
			b.Fatal(err)
		}
	}
}

func configMap(res *Result) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "operator", Name: routing.ConfigMapName},
		Data:       res.ConfigMap.Data,
		BinaryData: res.ConfigMap.BinaryData,
	}
}
