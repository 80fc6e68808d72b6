package kubectlplugin

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
)

// condition is a status condition as the manager writes it.
func condition(conditionType string, status metav1.ConditionStatus, reason string, at time.Time) metav1.Condition {
	return metav1.Condition{Type: conditionType, Status: status, Reason: reason, Message: reason,
		LastTransitionTime: metav1.NewTime(at), ObservedGeneration: 1}
}

func TestGet_Table(t *testing.T) {
	// The API server keeps times to the second; so does the clock here, so
	// ages come out exact.
	now := time.Now().UTC().Truncate(time.Second)
	fiveMinutesAgo := metav1.NewTime(now.Add(-5 * time.Minute))
	tests := []struct {
		name   string
		status v1alpha1.WebhookSubscriptionStatus
		want   []string
	}{{
		name: "shows readiness, health, counts and the last success of a subscription the manager reported on",
		status: v1alpha1.WebhookSubscriptionStatus{
			ObservedGeneration: 1,
			Conditions: []metav1.Condition{
				condition(v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded, now),
				condition(v1alpha1.ConditionDeliveryHealthy, metav1.ConditionTrue, v1alpha1.ReasonDeliverySucceeded, now),
			},
			Delivery: &v1alpha1.DeliveryStatus{
				LastSuccessTime: &fiveMinutesAgo, Succeeded: 12, Failed: 3, DeadLettered: 1, PendingRetries: 2,
			},
		},
		want: []string{"crm", "https://crm.example.com/hooks/involveo", "True (RouteLoaded)",
			"True (DeliverySucceeded)", "12", "3", "1", "2", "5m"},
	}, {
		name: "shows why deliveries fail and never for a subscription that has not succeeded yet",
		status: v1alpha1.WebhookSubscriptionStatus{
			ObservedGeneration: 1,
			Conditions: []metav1.Condition{
				condition(v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded, now),
				condition(v1alpha1.ConditionDeliveryHealthy, metav1.ConditionFalse, v1alpha1.ReasonDeliveryFailing, now),
			},
			Delivery: &v1alpha1.DeliveryStatus{Failed: 4, DeadLettered: 1},
		},
		want: []string{"crm", "https://crm.example.com/hooks/involveo", "True (RouteLoaded)",
			"False (DeliveryFailing)", "0", "4", "1", "0", "never"},
	}, {
		name: "shows why a subscription is not ready",
		status: v1alpha1.WebhookSubscriptionStatus{
			ObservedGeneration: 1,
			Conditions: []metav1.Condition{
				condition(v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSecretNotFound, now),
			},
		},
		want: []string{"crm", "https://crm.example.com/hooks/involveo", "False (SecretNotFound)",
			"Unknown", "0", "0", "0", "0", "never"},
	}, {
		name: "shows Unknown for a subscription the manager has not reported on yet",
		want: []string{"crm", "https://crm.example.com/hooks/involveo", "Unknown",
			"Unknown", "0", "0", "0", "0", "never"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			sub := newSubscription(t, ns, "crm", "https://crm.example.com/hooks/involveo")
			if tt.status.ObservedGeneration != 0 {
				sub.Status = tt.status
				g.Expect(k8s.Status().Update(context.Background(), sub)).To(Succeed())
			}

			stdout, _ := plugin{kubeconfig: adminKubeconfig, now: func() time.Time { return now }}.
				mustRun(t, "get", "-n", ns)

			header, body := rows(stdout)
			g.Expect(header).To(Equal([]string{"NAME", "URL", "READY", "HEALTHY", "DELIVERED", "FAILED", "DEAD", "PENDING", "LAST SUCCESS"}))
			g.Expect(body).To(Equal([][]string{tt.want}))
		})
	}
}

func TestGet_AllNamespaces(t *testing.T) {
	g := NewWithT(t)
	first, second := newNamespace(t), newNamespace(t)
	newSubscription(t, first, "crm", "https://crm.example.com/hooks")
	newSubscription(t, first, "billing", "https://billing.example.com/hooks")
	newSubscription(t, second, "crm", "https://other.example.com/hooks")

	stdout, _ := asAdmin().mustRun(t, "get", "-A")

	header, body := rows(stdout)
	g.Expect(header).To(HaveExactElements("NAMESPACE", "NAME", "URL", "READY", "HEALTHY", "DELIVERED", "FAILED", "DEAD", "PENDING", "LAST SUCCESS"))
	// Other tests' namespaces show up too; these three come sorted by
	// namespace, then name.
	var mine [][]string
	for _, row := range body {
		if row[0] == first || row[0] == second {
			mine = append(mine, row[:3])
		}
	}
	want := [][]string{
		{first, "billing", "https://billing.example.com/hooks"},
		{first, "crm", "https://crm.example.com/hooks"},
		{second, "crm", "https://other.example.com/hooks"},
	}
	if second < first {
		want = [][]string{want[2], want[0], want[1]}
	}
	g.Expect(mine).To(Equal(want))
}

func TestGet_EmptyNamespace(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)

	stdout, stderr := asAdmin().mustRun(t, "get", "--namespace", ns)

	g.Expect(stdout).To(BeEmpty())
	g.Expect(stderr).To(Equal("No resources found in " + ns + " namespace.\n"))
}
