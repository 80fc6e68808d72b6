package controller

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/testenv"
)

// TestManager_RunsWithTheGeneratedRBAC runs the manager with exactly the permissions
// of config/rbac/role.yaml, and the relay with exactly those of the Role the manager
// gives it, and walks a subscription to a failing delivery.
func TestManager_RunsWithTheGeneratedRBAC(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t, withGeneratedRBAC)
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("rbac")})
	create(t, subscription(s.tenantNS, "crm", ep.URL, "hook", noRetries))
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)

	ep.answer(http.StatusBadGateway)
	s.post(t, "task.published")
	ep.next(t)
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionDeliveryHealthy, metav1.ConditionFalse, v1alpha1.ReasonDeliveryFailing)
	g.Eventually(func(g Gomega) []eventsv1.Event { return events(g, s.tenantNS, "crm") }).WithTimeout(settle).
		Should(Satisfy(hasEvent(corev1.EventTypeWarning, v1alpha1.ReasonDeliveryFailing, "HTTP 502")))
}

// withGeneratedRBAC binds config/rbac/role.yaml to the manager's ServiceAccount in
// the test's operator namespace and has the manager and the relay authenticate as
// their ServiceAccounts.
func withGeneratedRBAC(t *testing.T, s *stack, _ *Config) {
	t.Helper()
	manager := "webhook-manager"
	for _, obj := range generatedRoles(t) {
		switch role := obj.(type) {
		case *rbacv1.ClusterRole:
			// Cluster-scoped: one per test, bound to this test's manager only.
			role.Name = "manager-role-" + s.operatorNS
			create(t, role)
			create(t, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: role.Name},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: manager, Namespace: s.operatorNS}},
			})
		case *rbacv1.Role:
			role.Namespace = s.operatorNS
			create(t, role)
			create(t, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Namespace: s.operatorNS, Name: role.Name},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: manager, Namespace: s.operatorNS}},
			})
		}
	}
	s.managerConfig = serviceAccountConfig(t, s.operatorNS, manager)
	relayClient, err := kubernetes.NewForConfig(serviceAccountConfig(t, s.operatorNS, relayobjects.Name))
	if err != nil {
		t.Fatal(err)
	}
	s.relayClient, s.relayWaitsForRBAC = relayClient, true
}

// generatedRoles reads the ClusterRole and Role of config/rbac/role.yaml.
func generatedRoles(t *testing.T) []runtime.Object {
	t.Helper()
	f, err := os.Open(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []runtime.Object
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		var obj runtime.Object
		switch u.GetKind() {
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "Role":
			obj = &rbacv1.Role{}
		default:
			t.Fatalf("unexpected %s in role.yaml", u.GetKind())
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
			t.Fatal(err)
		}
		out = append(out, obj)
	}
	if len(out) != 2 {
		t.Fatalf("role.yaml has %d roles, want a ClusterRole and a Role", len(out))
	}
	return out
}

// serviceAccountConfig authenticates as the ServiceAccount namespace/name would: RBAC
// knows a ServiceAccount by that user name and groups.
func serviceAccountConfig(t *testing.T, namespace, name string) *rest.Config {
	t.Helper()
	user, err := testEnv.AddUser(envtest.User{
		Name:   fmt.Sprintf("system:serviceaccount:%s:%s", namespace, name),
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}, restConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := user.Config()
	cfg.QPS, cfg.Burst = -1, 0
	return cfg
}
