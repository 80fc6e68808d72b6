package controller

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/render"
	"github.com/involveo/webhook-operator/internal/routing"
)

// secretHeader adds a header whose value comes from key of secret.
func secretHeader(name, secret, key string) func(*v1alpha1.WebhookSubscription) {
	return func(s *v1alpha1.WebhookSubscription) {
		s.Spec.Headers = append(s.Spec.Headers, v1alpha1.Header{Name: name,
			ValueFrom: &v1alpha1.HeaderValueSource{SecretKeyRef: v1alpha1.SecretKeyReference{Name: secret, Key: key}}})
	}
}

func literalHeader(name, value string) func(*v1alpha1.WebhookSubscription) {
	return func(s *v1alpha1.WebhookSubscription) {
		s.Spec.Headers = append(s.Spec.Headers, v1alpha1.Header{Name: name, Value: value})
	}
}

func noRetries(s *v1alpha1.WebhookSubscription) {
	s.Spec.Retry = v1alpha1.RetryPolicy{MaxRetries: new(int32(0))}
}

// unique makes a secret value no other test uses, so that finding it anywhere is a
// leak of this test's secret.
func unique(what string) string {
	return fmt.Sprintf("%s-%016x", what, rand.Uint64())
}

func TestManager_SubscriptionLifecycle(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	key1, key2, token := unique("api-key-one"), unique("api-key-two"), "Bearer "+unique("token")
	createSecret(t, s.tenantNS, "crm-hook", map[string]string{"api-key": key1, "token": token})
	create(t, subscription(s.tenantNS, "crm", ep.URL, "crm-hook", noRetries,
		literalHeader("X-Tenant", "acme"), secretHeader("Authorization", "crm-hook", "token")))
	id := s.tenantNS + "/crm"

	// Created → routes rendered: the table names credentials keys, never values.
	g.Eventually(func(g Gomega) {
		table := s.table(g)
		g.Expect(tableIDs(table)).To(ConsistOf(id))
		sub := table.Subscriptions[0]
		g.Expect(sub.Generation).To(Equal(int64(1)))
		g.Expect(sub.APIKey).To(Equal(routing.Secret{SecretKey: render.CredentialKey(s.tenantNS, "crm-hook", "api-key")}))
		g.Expect(sub.Headers).To(ConsistOf(
			routing.Header{Name: "X-Tenant", Value: "acme"},
			routing.Header{Name: "Authorization", SecretKey: render.CredentialKey(s.tenantNS, "crm-hook", "token")}))
	}).WithTimeout(settle).Should(Succeed())
	// → the relay loads them → Ready.
	g.Eventually(func() bool { return s.routed(id, 1) }).WithTimeout(settle).Should(BeTrue())
	sub := condition(t, s.tenantNS, "crm", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	g.Expect(sub.Status.ObservedGeneration).To(Equal(int64(1)))
	g.Expect(meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionReconciling)).To(BeNil())
	g.Expect(meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionStalled)).To(BeNil())
	g.Expect(meta.IsStatusConditionPresentAndEqual(sub.Status.Conditions, v1alpha1.ConditionDeliveryHealthy, metav1.ConditionUnknown)).To(BeTrue())

	// An event is delivered with the API key and the headers from the Secret.
	body := s.post(t, "task.published")
	got := ep.next(t)
	g.Expect(got.body).To(Equal(body))
	g.Expect(got.header.Get("X-Api-Key")).To(Equal(key1))
	g.Expect(got.header.Get("Authorization")).To(Equal(token))
	g.Expect(got.header.Get("X-Tenant")).To(Equal("acme"))
	sub = condition(t, s.tenantNS, "crm", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionTrue, v1alpha1.ReasonDeliverySucceeded)
	g.Expect(sub.Status.Delivery.LastSuccessTime).NotTo(BeNil())
	g.Expect(sub.Status.Delivery.Succeeded).To(Equal(int64(1)))

	// The endpoint fails: DeliveryHealthy names the 500, a Warning Event says so, and
	// with no retries the delivery is dead-lettered.
	ep.answer(http.StatusInternalServerError)
	s.post(t, "task.status_changed")
	ep.next(t)
	sub = condition(t, s.tenantNS, "crm", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionFalse, v1alpha1.ReasonDeliveryFailing)
	healthy := meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionDeliveryHealthy)
	g.Expect(healthy.Message).To(And(ContainSubstring("HTTP 500"), ContainSubstring("task.status_changed")))
	g.Expect(sub.Status.Delivery.LastFailure).To(Equal(&v1alpha1.DeliveryFailure{
		Reason: "HTTP 500 Internal Server Error", StatusCode: 500, Event: "task.status_changed"}))
	g.Expect(sub.Status.Delivery.LastFailureTime).NotTo(BeNil())
	g.Eventually(func(g Gomega) []eventsv1.Event { return events(g, s.tenantNS, "crm") }).WithTimeout(settle).Should(And(
		Satisfy(hasEvent(corev1.EventTypeWarning, v1alpha1.ReasonDeliveryFailing, "HTTP 500")),
		Satisfy(hasEvent(corev1.EventTypeWarning, v1alpha1.ReasonDeadLettered, "1 deliveries gave up")),
	))

	// The Secret is rotated: the next delivery carries the new key, and the
	// subscription recovers.
	ep.answer(http.StatusOK)
	rotated := &corev1.Secret{}
	g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: s.tenantNS, Name: "crm-hook"}, rotated)).To(Succeed())
	rotated.Data["api-key"] = []byte(key2)
	g.Expect(k8s.Update(context.Background(), rotated)).To(Succeed())
	g.Eventually(func() string {
		s.post(t, "task.created")
		return ep.next(t).header.Get("X-Api-Key")
	}).WithTimeout(settle).Should(Equal(key2))
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionTrue, v1alpha1.ReasonDeliverySucceeded)
	g.Eventually(func(g Gomega) []eventsv1.Event { return events(g, s.tenantNS, "crm") }).WithTimeout(settle).
		Should(Satisfy(hasEvent(corev1.EventTypeNormal, v1alpha1.ReasonDeliveryRecovered)))

	// The rotated-out key is no longer kept anywhere once the relay has the new one.
	g.Eventually(func(g Gomega) {
		creds := &corev1.Secret{}
		g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: s.operatorNS, Name: routing.CredentialsSecretName}, creds)).To(Succeed())
		g.Expect(creds.Data).To(HaveKeyWithValue(render.CredentialKey(s.tenantNS, "crm-hook", "api-key"), []byte(key2)))
	}).WithTimeout(settle).Should(Succeed())

	assertNoLeak(t, s, key1, key2, token)
}

func TestManager_SecretDeletedLeavesOtherSubscriptionsRouted(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	gone, kept := newEndpoint(t), newEndpoint(t)
	createSecret(t, s.tenantNS, "gone-hook", map[string]string{"api-key": unique("gone")})
	createSecret(t, s.tenantNS, "kept-hook", map[string]string{"api-key": unique("kept")})
	create(t, subscription(s.tenantNS, "gone", gone.URL, "gone-hook"))
	create(t, subscription(s.tenantNS, "kept", kept.URL, "kept-hook"))
	condition(t, s.tenantNS, "gone", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	condition(t, s.tenantNS, "kept", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)

	g.Expect(k8s.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.tenantNS, Name: "gone-hook"}})).To(Succeed())
	sub := condition(t, s.tenantNS, "gone", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSecretNotFound)
	ready := meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionReady)
	g.Expect(ready.Message).To(And(ContainSubstring(`Secret "gone-hook" not found`), ContainSubstring("spec.apiKeySecretRef")))
	g.Expect(meta.IsStatusConditionTrue(sub.Status.Conditions, v1alpha1.ConditionReconciling)).To(BeTrue(),
		"a missing Secret is waited for, not a stalled spec")
	g.Eventually(func() bool { return s.routed(s.tenantNS+"/gone", 1) }).WithTimeout(settle).Should(BeFalse())

	condition(t, s.tenantNS, "kept", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	s.post(t, "task.deleted")
	g.Expect(kept.next(t).header.Get("X-Involveo-Event")).To(Equal("task.deleted"))
	gone.none(t)

	// The Secret comes back: the subscription is routed again without a spec change.
	createSecret(t, s.tenantNS, "gone-hook", map[string]string{"api-key": unique("back")})
	condition(t, s.tenantNS, "gone", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
}

func TestManager_SuspendLeavesTheTable(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("suspend")})
	create(t, subscription(s.tenantNS, "paused", ep.URL, "hook"))
	condition(t, s.tenantNS, "paused", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)

	setSuspend(g, s.tenantNS, "paused", true)
	sub := condition(t, s.tenantNS, "paused", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSuspended)
	g.Expect(sub.Status.ObservedGeneration).To(Equal(int64(2)))
	g.Expect(meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionReconciling)).To(BeNil())
	g.Expect(meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionStalled)).To(BeNil())
	g.Eventually(func(g Gomega) []string { return tableIDs(s.table(g)) }).WithTimeout(settle).Should(BeEmpty())
	g.Eventually(func() bool { return s.routed(s.tenantNS+"/paused", 2) || s.routed(s.tenantNS+"/paused", 1) }).
		WithTimeout(settle).Should(BeFalse())
	s.post(t, "task.published")
	ep.none(t)

	setSuspend(g, s.tenantNS, "paused", false)
	condition(t, s.tenantNS, "paused", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	s.post(t, "task.published")
	ep.next(t)
}

func setSuspend(g Gomega, namespace, name string, suspend bool) {
	sub := get(g, namespace, name)
	patch := client.MergeFrom(sub.DeepCopy())
	sub.Spec.Suspend = suspend
	g.Expect(k8s.Patch(context.Background(), sub, patch)).To(Succeed())
}

func TestManager_DeleteRemovesTheRoute(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	secretValue := unique("deleted")
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": secretValue})
	sub := subscription(s.tenantNS, "doomed", ep.URL, "hook")
	create(t, sub)
	condition(t, s.tenantNS, "doomed", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	s.post(t, "task.created")
	ep.next(t)

	g.Expect(k8s.Delete(context.Background(), sub)).To(Succeed())
	g.Eventually(func(g Gomega) []string { return tableIDs(s.table(g)) }).WithTimeout(settle).Should(BeEmpty())
	g.Eventually(func() bool { return s.routed(s.tenantNS+"/doomed", 1) }).WithTimeout(settle).Should(BeFalse())
	// Its credential leaves the credentials Secret once the relay has the new table.
	g.Eventually(func(g Gomega) map[string][]byte {
		creds := &corev1.Secret{}
		g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: s.operatorNS, Name: routing.CredentialsSecretName}, creds)).To(Succeed())
		return creds.Data
	}).WithTimeout(settle).Should(BeEmpty())
	s.post(t, "task.created")
	ep.none(t)
}

func TestManager_InvalidSpecIsStalledAndLeftOut(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("invalid"), "newline": "trailing\n"})
	// The CRD allows any header value; HTTP does not allow a line break.
	create(t, subscription(s.tenantNS, "bad-header", ep.URL, "hook", literalHeader("X-Note", "two\nlines")))
	create(t, subscription(s.tenantNS, "bad-secret", ep.URL, "hook", secretHeader("X-Token", "hook", "newline")))
	create(t, subscription(s.tenantNS, "good", ep.URL, "hook"))

	sub := condition(t, s.tenantNS, "bad-header", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonInvalidSpec)
	stalled := meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionStalled)
	g.Expect(stalled).NotTo(BeNil())
	g.Expect(stalled.Status).To(Equal(metav1.ConditionTrue))
	g.Expect(stalled.Message).To(ContainSubstring("spec.headers[0]"))
	sub = condition(t, s.tenantNS, "bad-secret", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonInvalidSecretValue)
	g.Expect(meta.FindStatusCondition(sub.Status.Conditions, v1alpha1.ConditionReady).Message).To(ContainSubstring(`key "newline"`))
	condition(t, s.tenantNS, "good", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	g.Expect(tableIDs(s.table(g))).To(ConsistOf(s.tenantNS + "/good"))
}

func TestManager_SecretValuesNeverLeak(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	ep.echo = true
	key, token, broken := unique("leak-key"), unique("leak-token"), unique("leak-broken")
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": key, "token": token, "broken": broken + "\n"})
	create(t, subscription(s.tenantNS, "echo", ep.URL, "hook", noRetries, secretHeader("X-Token", "hook", "token")))
	create(t, subscription(s.tenantNS, "broken", ep.URL, "hook", secretHeader("X-Token", "hook", "broken")))
	create(t, subscription(s.tenantNS, "no-key", ep.URL, "hook", secretHeader("X-Token", "hook", "absent")))
	condition(t, s.tenantNS, "echo", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	condition(t, s.tenantNS, "broken", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonInvalidSecretValue)
	condition(t, s.tenantNS, "no-key", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSecretKeyNotFound)

	// A failing endpoint that echoes the request headers, keys included, in its body.
	ep.answer(http.StatusUnauthorized)
	s.post(t, "task.published")
	g.Expect(ep.next(t).header.Get("X-Api-Key")).To(Equal(key))
	condition(t, s.tenantNS, "echo", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionFalse, v1alpha1.ReasonDeliveryFailing)
	g.Eventually(func(g Gomega) []eventsv1.Event { return events(g, s.tenantNS, "echo") }).WithTimeout(settle).
		Should(Satisfy(hasEvent(corev1.EventTypeWarning, v1alpha1.ReasonDeadLettered)))

	assertNoLeak(t, s, key, token, broken)
}

// assertNoLeak looks for secret values in everything a user or an operator reads:
// the subscriptions' status, the Events, the routing ConfigMap and the logs of the
// managers and relays.
func assertNoLeak(t *testing.T, s *stack, secrets ...string) {
	t.Helper()
	g := NewWithT(t)
	var subs v1alpha1.WebhookSubscriptionList
	g.Expect(k8s.List(context.Background(), &subs, client.InNamespace(s.tenantNS))).To(Succeed())
	var evs eventsv1.EventList
	g.Expect(k8s.List(context.Background(), &evs, client.InNamespace(s.tenantNS))).To(Succeed())
	g.Expect(evs.Items).NotTo(BeEmpty())
	var coreEvents corev1.EventList
	g.Expect(k8s.List(context.Background(), &coreEvents, client.InNamespace(s.tenantNS))).To(Succeed())
	cm := &corev1.ConfigMap{}
	g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: s.operatorNS, Name: routing.ConfigMapName}, cm)).To(Succeed())

	places := map[string]string{"logs": logs.String()}
	for name, obj := range map[string]any{"status": subs, "events": evs, "core events": coreEvents, "routing ConfigMap": cm} {
		b, err := json.Marshal(obj)
		g.Expect(err).NotTo(HaveOccurred())
		places[name] = string(b)
	}
	g.Expect(places["logs"]).To(ContainSubstring(s.tenantNS), "the logs were captured")
	for where, text := range places {
		for _, secret := range secrets {
			for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret))} {
				if strings.Contains(text, form) {
					t.Errorf("secret value %q found in %s", secret, where)
				}
			}
		}
	}
}

// TestManager_RestartKeepsDeliveryCounts restarts the manager while the relay keeps
// running: the counts go on from the status, neither reset nor counted twice.
func TestManager_RestartKeepsDeliveryCounts(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("restart")})
	create(t, subscription(s.tenantNS, "crm", ep.URL, "hook"))
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	succeeded := func(g Gomega) int64 {
		d := get(g, s.tenantNS, "crm").Status.Delivery
		g.Expect(d).NotTo(BeNil())
		return d.Succeeded
	}
	for range 2 {
		s.post(t, "task.created")
		ep.next(t)
	}
	g.Eventually(succeeded).WithTimeout(settle).Should(Equal(int64(2)))

	s.restartManager(t)
	// The new manager has polled the relay (whose own count is 2) and written status.
	g.Consistently(succeeded).WithTimeout(5 * pollInterval).Should(Equal(int64(2)))
	s.post(t, "task.created")
	ep.next(t)
	g.Eventually(succeeded).WithTimeout(settle).Should(Equal(int64(3)))
}
