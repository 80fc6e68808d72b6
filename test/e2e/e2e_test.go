// Package e2e walks the user's path on a local control plane with the real
// manager and relay binaries: apply a Secret and a subscription, see it
// Ready, post the seed's events, watch deliveries and status.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/devenv"
	"github.com/involveo/webhook-operator/internal/testenv"
)

var env *devenv.Env

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "involveo-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/manager", "./cmd/relay")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build binaries: %v\n%s", err, out)
		return 1
	}
	env, err = devenv.Start(context.Background(), devenv.Options{
		Dir:                dir,
		ManagerBin:         filepath.Join(bin, "manager"),
		RelayBin:           filepath.Join(bin, "relay"),
		HealthPollInterval: time.Second,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start environment:", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		for _, f := range []string{env.ManagerLog, env.RelayLog} {
			if b, err := os.ReadFile(f); err == nil {
				fmt.Fprintf(os.Stderr, "---- %s\n%s\n", f, tail(b, 60))
			}
		}
	}
	env.Stop()
	return code
}

func tail(b []byte, lines int) []byte {
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return bytes.Join(parts, []byte("\n"))
}

// sink is a subscriber endpoint on 127.0.0.1 whose answer can change.
type sink struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	got    []http.Header
	bodies [][]byte
}

func newSink(t *testing.T) *sink {
	s := &sink{status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.got = append(s.got, r.Header.Clone())
		s.bodies = append(s.bodies, body)
		w.WriteHeader(s.status)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func (s *sink) setStatus(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = code
}

func postEvent(g Gomega, eventType string) {
	body, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "internal", "event", "testdata", eventType+".json"))
	g.Expect(err).NotTo(HaveOccurred())
	resp, err := http.Post(env.Ingest+"/v1/events", "application/json", bytes.NewReader(body))
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusAccepted))
}

func condition(g Gomega, key client.ObjectKey, condType string) *metav1.Condition {
	var whs v1alpha1.WebhookSubscription
	g.Expect(env.Client.Get(context.Background(), key, &whs)).To(Succeed())
	c := meta.FindStatusCondition(whs.Status.Conditions, condType)
	g.Expect(c).NotTo(BeNil(), "condition %s not set yet", condType)
	g.Expect(c.ObservedGeneration).To(Equal(whs.Generation))
	return c
}

func TestE2E_SubscriptionLifecycle(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-lifecycle"
	g.Expect(env.EnsureNamespace(ctx, ns)).To(Succeed())
	ep := newSink(t)

	g.Expect(env.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "crm-hook", Namespace: ns},
		StringData: map[string]string{"api-key": "e2e-key-7f3a", "token": "Bearer e2e-token-91c"},
	})).To(Succeed())
	whs := &v1alpha1.WebhookSubscription{
		ObjectMeta: metav1.ObjectMeta{Name: "crm-sync", Namespace: ns},
		Spec: v1alpha1.WebhookSubscriptionSpec{
			Endpoint:        v1alpha1.Endpoint{URL: ep.URL + "/hooks/involveo"},
			Events:          []v1alpha1.EventPattern{"task.*"},
			APIKeySecretRef: v1alpha1.SecretKeyReference{Name: "crm-hook", Key: "api-key"},
			Headers: []v1alpha1.Header{
				{Name: "X-Tenant", Value: "acme"},
				{Name: "Authorization", ValueFrom: &v1alpha1.HeaderValueSource{
					SecretKeyRef: v1alpha1.SecretKeyReference{Name: "crm-hook", Key: "token"}}},
			},
			Retry: v1alpha1.RetryPolicy{MaxRetries: ptr(int32(1)), Interval: &metav1.Duration{Duration: time.Second}},
		},
	}
	g.Expect(env.Client.Create(ctx, whs)).To(Succeed())
	key := client.ObjectKeyFromObject(whs)

	// The relay reports a routing revision with this generation.
	g.Eventually(func(g Gomega) {
		c := condition(g, key, v1alpha1.ConditionReady)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())

	seed := []string{"task.created", "task.published", "task.status_changed", "task.deleted"}
	for _, e := range seed {
		postEvent(g, e)
	}
	g.Eventually(ep.count, 20*time.Second, 100*time.Millisecond).Should(Equal(len(seed)))
	ep.mu.Lock()
	for _, h := range ep.got {
		g.Expect(h.Get("X-Api-Key")).To(Equal("e2e-key-7f3a"))
		g.Expect(h.Get("Authorization")).To(Equal("Bearer e2e-token-91c"))
		g.Expect(h.Get("X-Tenant")).To(Equal("acme"))
	}
	ep.mu.Unlock()
	g.Eventually(func(g Gomega) {
		var got v1alpha1.WebhookSubscription
		g.Expect(env.Client.Get(ctx, key, &got)).To(Succeed())
		g.Expect(got.Status.Delivery).NotTo(BeNil())
		g.Expect(got.Status.Delivery.Succeeded).To(BeNumerically("==", len(seed)))
		g.Expect(got.Status.Delivery.LastSuccessTime).NotTo(BeNil())
		g.Expect(condition(g, key, v1alpha1.ConditionDeliveryHealthy).Status).To(Equal(metav1.ConditionTrue))
	}, 20*time.Second, 200*time.Millisecond).Should(Succeed())

	// The endpoint starts failing: status and a Warning Event say so.
	ep.setStatus(http.StatusInternalServerError)
	postEvent(g, "task.published")
	g.Eventually(func(g Gomega) {
		c := condition(g, key, v1alpha1.ConditionDeliveryHealthy)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Message).To(ContainSubstring("500"))
	}, 20*time.Second, 200*time.Millisecond).Should(Succeed())
	g.Eventually(func(g Gomega) {
		var events corev1.EventList
		g.Expect(env.Client.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
		var warnings []string
		for _, e := range events.Items {
			if e.Type == corev1.EventTypeWarning && e.InvolvedObject.Name == whs.Name {
				warnings = append(warnings, e.Reason+": "+e.Message)
			}
		}
		g.Expect(strings.Join(warnings, "\n")).To(ContainSubstring("500"))
	}, 20*time.Second, 200*time.Millisecond).Should(Succeed())

	// Deleted: the route goes, and no more deliveries happen.
	g.Expect(env.Client.Delete(ctx, whs)).To(Succeed())
	g.Eventually(func(g Gomega) {
		resp, err := http.Get(env.Admin + "/v1/subscriptions")
		g.Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		g.Expect(string(b)).NotTo(ContainSubstring(ns + "/crm-sync"))
	}, 20*time.Second, 200*time.Millisecond).Should(Succeed())
	before := ep.count()
	postEvent(g, "task.created")
	g.Consistently(ep.count, 3*time.Second, 200*time.Millisecond).Should(Equal(before))
}

func ptr[T any](v T) *T { return &v }
