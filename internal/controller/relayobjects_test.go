package controller

import (
	"context"
	"fmt"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/routing"
)

// TestRelayObjects_NoDriftRightAfterApply checks the drift detection against the real
// API server: an object just applied must compare equal, or the manager would
// re-apply every object on every pass.
func TestRelayObjects_NoDriftRightAfterApply(t *testing.T) {
	size := resource.MustParse("5Gi")
	tests := []struct {
		name string
		cfg  relayobjects.Config
	}{
		{name: "embedded store on an emptyDir", cfg: relayobjects.Config{Image: "img:1", Replicas: 1}},
		{name: "embedded store on a PVC", cfg: relayobjects.Config{Image: "img:1", Replicas: 1, StorageSize: &size}},
		{name: "external NATS with three replicas", cfg: relayobjects.Config{Image: "img:1", Replicas: 3, NATSURL: "nats://nats:4222"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			tt.cfg.Namespace = createNamespace(t, "objects")
			objs := relayObjects(relayobjects.Build(tt.cfg), tt.cfg.Namespace)
			for _, o := range objs {
				g.Expect(k8s.Apply(context.Background(), o.desired, applyOptions...)).To(Succeed(), o.kind)
			}
			// Apply fills in what the server answered; compare with a fresh build, as
			// every pass of the manager does.
			for _, o := range relayObjects(relayobjects.Build(tt.cfg), tt.cfg.Namespace) {
				drifted, err := o.drifted(context.Background(), k8s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(drifted).To(BeFalse(), "%s reads back as drifted", o.kind)
			}
		})
	}
}

func TestManager_RelayObjects(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ctx := context.Background()
	key := types.NamespacedName{Namespace: s.operatorNS, Name: relayobjects.Name}

	// With no subscription at all the routing objects exist and the relay loads them.
	g.Eventually(func(g Gomega) []string { return tableIDs(s.table(g)) }).WithTimeout(settle).Should(BeEmpty())
	g.Eventually(func() bool { return s.relay.Health().Loaded }).WithTimeout(settle).Should(BeTrue())

	deployment := &appsv1.Deployment{}
	g.Eventually(func() error { return k8s.Get(ctx, key, deployment) }).WithTimeout(settle).Should(Succeed())
	g.Expect(*deployment.Spec.Replicas).To(Equal(int32(1)))
	g.Expect(deployment.Spec.Strategy.Type).To(Equal(appsv1.RecreateDeploymentStrategyType))
	g.Expect(deployment.Spec.Template.Spec.Containers[0].Image).To(Equal("example.com/webhook-operator:test"))
	role := &rbacv1.Role{}
	g.Eventually(func() error { return k8s.Get(ctx, key, role) }).WithTimeout(settle).Should(Succeed())
	g.Expect(role.Rules).To(ConsistOf(
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{routing.ConfigMapName}, Verbs: []string{"get", "list", "watch"}},
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{routing.CredentialsSecretName}, Verbs: []string{"get", "list", "watch"}},
	))
	service := &corev1.Service{}
	g.Eventually(func() error { return k8s.Get(ctx, key, service) }).WithTimeout(settle).Should(Succeed())
	g.Expect(service.Spec.Ports).To(HaveLen(2))
	for _, obj := range []client.Object{&corev1.ServiceAccount{}, &rbacv1.RoleBinding{}, &networkingv1.NetworkPolicy{}} {
		g.Eventually(func() error { return k8s.Get(ctx, key, obj) }).WithTimeout(settle).Should(Succeed())
	}
	g.Expect(apierrors.IsNotFound(k8s.Get(ctx, key, &policyv1.PodDisruptionBudget{}))).To(BeTrue(), "no disruption budget for one replica")

	// Subscriptions come and go without touching the relay's objects: the relay
	// hot-reloads, its pods are not restarted.
	before := resourceVersions(g, key)
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("objects")})
	for _, name := range []string{"one", "two", "three"} {
		create(t, subscription(s.tenantNS, name, ep.URL, "hook"))
	}
	for _, name := range []string{"one", "two", "three"} {
		condition(t, s.tenantNS, name, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	}
	g.Expect(resourceVersions(g, key)).To(Equal(before))

	// Someone edits the Deployment: the manager puts its fields back.
	g.Expect(k8s.Get(ctx, key, deployment)).To(Succeed())
	deployment.Spec.Template.Spec.Containers[0].Image = "example.com/someone-else:latest"
	g.Expect(k8s.Update(ctx, deployment)).To(Succeed())
	g.Eventually(func(g Gomega) string {
		g.Expect(k8s.Get(ctx, key, deployment)).To(Succeed())
		return deployment.Spec.Template.Spec.Containers[0].Image
	}).WithTimeout(settle).Should(Equal("example.com/webhook-operator:test"))

	// Someone deletes the Service: it comes back.
	g.Expect(k8s.Delete(ctx, service)).To(Succeed())
	g.Eventually(func() error { return k8s.Get(ctx, key, &corev1.Service{}) }).WithTimeout(settle).Should(Succeed())
}

// resourceVersions of the relay's objects; equal versions mean nothing was written.
func resourceVersions(g Gomega, key types.NamespacedName) map[string]string {
	out := map[string]string{}
	for _, obj := range []client.Object{&corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{},
		&appsv1.Deployment{}, &corev1.Service{}, &networkingv1.NetworkPolicy{}} {
		g.Expect(k8s.Get(context.Background(), key, obj)).To(Succeed())
		out[fmt.Sprintf("%T", obj)] = fmt.Sprintf("resourceVersion %s, generation %d", obj.GetResourceVersion(), obj.GetGeneration())
	}
	return out
}
