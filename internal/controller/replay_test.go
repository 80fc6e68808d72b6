package controller

import (
	"context"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/relay"
)

func annotate(g Gomega, namespace, name string, kv map[string]string) {
	sub := get(g, namespace, name)
	if sub.Annotations == nil {
		sub.Annotations = map[string]string{}
	}
	for k, v := range kv {
		sub.Annotations[k] = v
	}
	g.Expect(k8s.Update(context.Background(), sub)).To(Succeed())
}

func TestManager_RedeliverAnnotationReplaysDeadLettersOnce(t *testing.T) {
	g := NewWithT(t)
	s := startStackWithRelay(t, func(c *relay.Config) {
		c.Breaker = relay.BreakerConfig{AfterDeadLetters: 3, ProbeEvery: time.Hour}
	})
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "crm-hook", map[string]string{"api-key": unique("key")})
	create(t, subscription(s.tenantNS, "crm", ep.URL, "crm-hook", noRetries))
	g.Eventually(func() bool { return s.routed(s.tenantNS+"/crm", 1) }).WithTimeout(settle).Should(BeTrue())

	// The endpoint is down longer than the retry budget: three dead letters,
	// and the relay pauses it.
	ep.answer(http.StatusServiceUnavailable)
	const n = 3
	for range n {
		s.post(t, "task.created")
		ep.next(t)
	}
	sub := condition(t, s.tenantNS, "crm", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionFalse, v1alpha1.ReasonEndpointPaused)
	g.Expect(sub.Status.Delivery.DeadLettered).To(Equal(int64(n)))
	g.Eventually(func(g Gomega) []eventsv1.Event { return events(g, s.tenantNS, "crm") }).WithTimeout(settle).
		Should(Satisfy(hasEvent(corev1.EventTypeWarning, v1alpha1.ReasonEndpointPaused, "held, not dropped")))

	// The endpoint is back; the user annotates: every dead letter is delivered
	// once more, the pause lifts, and status says how many.
	ep.answer(http.StatusOK)
	annotate(g, s.tenantNS, "crm", map[string]string{v1alpha1.AnnotationRedeliver: "after-outage-1"})
	for range n {
		ep.next(t)
	}
	g.Eventually(func(g Gomega) {
		sub := get(g, s.tenantNS, "crm")
		g.Expect(sub.Status.Replay).NotTo(BeNil())
		g.Expect(sub.Status.Replay.Requested).To(Equal("after-outage-1"))
		g.Expect(sub.Status.Replay.Replayed).To(Equal(int64(n)))
		g.Expect(sub.Status.Replay.CompletedTime).NotTo(BeNil())
	}).WithTimeout(settle).Should(Succeed())
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionTrue, v1alpha1.ReasonDeliverySucceeded)

	// Re-applying the same value (GitOps) replays nothing.
	annotate(g, s.tenantNS, "crm", map[string]string{v1alpha1.AnnotationRedeliver: "after-outage-1", "touched": "yes"})
	ep.none(t)
	g.Expect(get(g, s.tenantNS, "crm").Status.Replay.Replayed).To(Equal(int64(n)))
}
