package controller

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/routing"
)

// withPodDiscovery has the manager find the relay through the Service's
// EndpointSlices, as in a cluster, instead of a fixed health URL.
func withPodDiscovery(_ *testing.T, _ *stack, c *Config) { c.RelayHealthURL = "" }

func TestManager_FindsRelayPodsThroughEndpointSlices(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t, withPodDiscovery)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("discovery")})
	create(t, subscription(s.tenantNS, "crm", "https://crm.example.com/hook", "hook"))
	sub := condition(t, s.tenantNS, "crm", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonRelayUnavailable)
	g.Expect(sub.Status.Conditions).To(ContainElement(HaveField("Message", ContainSubstring("no relay pod found"))))

	host, adminPort := publishAdmin(t, s)
	create(t, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.operatorNS, Name: relayobjects.Name + "-abcde",
			Labels: map[string]string{discoveryv1.LabelServiceName: relayobjects.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			// A terminating pod is not polled: it would count as a relay that
			// never loads the new table.
			{Addresses: []string{"10.255.0.1"}, Conditions: discoveryv1.EndpointConditions{Terminating: ptr.To(true)}},
		},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To(relayobjects.IngestPortName), Port: ptr.To(int32(relayobjects.IngestPort))},
			{Name: ptr.To(relayobjects.AdminPortName), Port: ptr.To(int32(adminPort))},
		},
	})
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
}

// publishAdmin makes the relay's admin port reachable on an address an EndpointSlice
// may name (the API server refuses loopback ones) by proxying to it.
func publishAdmin(t *testing.T, s *stack) (string, int) {
	t.Helper()
	ip := hostIP(t)
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(s.admin)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httputil.NewSingleHostReverseProxy(target), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ip, ln.Addr().(*net.TCPAddr).Port
}

// hostIP is a non-loopback, non-link-local IPv4 address of this machine.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address to publish in an EndpointSlice")
	return ""
}

// TestManager_BurstOfSubscriptionsCoalesces creates subscriptions as fast as the API
// server takes them and counts the routing ConfigMap's writes.
func TestManager_BurstOfSubscriptionsCoalesces(t *testing.T) {
	const n = 300
	g := NewWithT(t)
	s := startStack(t)
	g.Eventually(func(g Gomega) []string { return tableIDs(s.table(g)) }).WithTimeout(settle).Should(BeEmpty())
	writes := countWrites(t, s.operatorNS)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("burst")})
	createMany(t, n, func(i int) client.Object {
		return subscription(s.tenantNS, "hook-"+strconv.Itoa(i), "https://hooks.example.com/"+strconv.Itoa(i), "hook")
	})
	g.Eventually(func(g Gomega) int { return readyCount(g, s.tenantNS) }).WithTimeout(60 * time.Second).Should(Equal(n))
	total := writes.Load()
	t.Logf("%d subscriptions: %d ConfigMap writes", n, total)
	// The manager passes at most once per coalescing delay while the burst lasts.
	g.Expect(total).To(BeNumerically("<=", n/10))
	// Health polls go on, statuses are settled: nothing is written any more.
	g.Consistently(writes.Load).WithTimeout(5 * pollInterval).Should(Equal(total))
}

// countWrites counts writes of the routing ConfigMap from now on.
func countWrites(t testing.TB, namespace string) *atomic.Int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := clientset.CoreV1().ConfigMaps(namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: "metadata.name=" + routing.ConfigMapName})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var seen string
	go func() {
		for e := range w.ResultChan() {
			cm, ok := e.Object.(*corev1.ConfigMap)
			// The watch starts by listing the current object; only later versions
			// are writes.
			if ok && seen != "" && cm.ResourceVersion != seen {
				n.Add(1)
			}
			if ok {
				seen = cm.ResourceVersion
			}
		}
	}()
	return &n
}

// createMany creates n objects with a few concurrent clients, as kubectl apply of a
// large directory or a GitOps sync does.
func createMany(t testing.TB, n int, build func(int) client.Object) {
	t.Helper()
	const workers = 16
	next := make(chan int)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var first error
			for i := range next {
				if err := k8s.Create(context.Background(), build(i)); err != nil && first == nil {
					first = err
				}
			}
			errs <- first
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// readyCount counts the subscriptions of a namespace that are Ready.
func readyCount(g Gomega, namespace string) int {
	var list v1alpha1.WebhookSubscriptionList
	g.Expect(k8s.List(context.Background(), &list, client.InNamespace(namespace))).To(Succeed())
	n := 0
	for _, s := range list.Items {
		for _, c := range s.Status.Conditions {
			if c.Type == v1alpha1.ConditionReady && c.Status == metav1.ConditionTrue && c.ObservedGeneration == s.Generation {
				n++
			}
		}
	}
	return n
}

// TestManager_UnreferencedSecretsTriggerNothing: Secrets are watched as metadata
// everywhere, but only one a subscription references (or the credentials Secret) is
// worth a pass.
func TestManager_UnreferencedSecretsTriggerNothing(t *testing.T) {
	g := NewWithT(t)
	s := startStack(t)
	ep := newEndpoint(t)
	createSecret(t, s.tenantNS, "hook", map[string]string{"api-key": unique("unreferenced")})
	create(t, subscription(s.tenantNS, "crm", ep.URL, "hook"))
	condition(t, s.tenantNS, "crm", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRouteLoaded)
	passes := func() int {
		return strings.Count(logs.String(), `"relay pass done" "controller"="relay" "namespace"="`+s.operatorNS+`"`)
	}
	// Settled: no pass for a few polls.
	var before int
	g.Eventually(func() bool {
		n := passes()
		time.Sleep(5 * pollInterval)
		before = passes()
		return n > 0 && n == before
	}).WithTimeout(settle).Should(BeTrue())

	createSecret(t, s.tenantNS, "unrelated", map[string]string{"x": "y"})
	createSecret(t, s.operatorNS, "unrelated", map[string]string{"x": "y"})
	g.Consistently(passes).WithTimeout(5 * pollInterval).Should(Equal(before))

	// The referenced one does count.
	rotated := &corev1.Secret{}
	g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: s.tenantNS, Name: "hook"}, rotated)).To(Succeed())
	rotated.Data["api-key"] = []byte(unique("rotated"))
	g.Expect(k8s.Update(context.Background(), rotated)).To(Succeed())
	g.Eventually(passes).WithTimeout(settle).Should(BeNumerically(">", before))
}
